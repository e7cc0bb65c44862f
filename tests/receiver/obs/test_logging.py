"""Log lines: the JSON format, the rate limit on refused callbacks, and why a stuck download waits."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.config.settings import Settings, SettingsError
from receiver.engine.downloading import DOWNLOAD_NOTE
from receiver.engine.sweep import sweep_once
from receiver.obs.logs import JsonFormatter, LogLimiter, install_log_format
from submitter.status import Status
from tests.harness import Clock, harness
from tests.receiver.web.test_app import a_job, hook_path

pytestmark = pytest.mark.anyio


@pytest.fixture
def json_root() -> Iterator[io.StringIO]:
    """The root logger with one handler writing to a buffer, in the JSON format; restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    uvicorn = logging.getLogger("uvicorn.error")
    saved_uvicorn, saved_propagate = uvicorn.handlers[:], uvicorn.propagate
    buffer = io.StringIO()
    root.handlers = [logging.StreamHandler(buffer)]
    uvicorn.handlers = [logging.StreamHandler(buffer)]  # as uvicorn's own log config: its handler, no propagation
    uvicorn.propagate = False
    root.setLevel(logging.INFO)
    # Other tests (the CLI's main) quieten some loggers: make these tests independent of them.
    levels = {name: logging.getLogger(name).level for name in ("httpx", "uvicorn.error", "fluxhook")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        install_log_format("json")
        yield buffer
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        root.handlers, uvicorn.handlers, uvicorn.propagate = saved_handlers, saved_uvicorn, saved_propagate
        root.setLevel(saved_level)


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_json_lines_parse_and_carry_the_context(json_root: io.StringIO) -> None:
    log = logging.getLogger("fluxhook.sweep")
    log.warning("job %s: download failed", "fh_1", extra={"job_id": "fh_1", "provider": "bfl",
                                                          "event": "download-retry"})
    logging.getLogger("uvicorn.error").info("Started server process")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("fluxhook").exception("a bug")
    first, second, third = lines(json_root)
    assert first["level"] == "WARNING" and first["logger"] == "fluxhook.sweep"
    assert first["message"] == "job fh_1: download failed"
    assert (first["job_id"], first["provider"], first["event"]) == ("fh_1", "bfl", "download-retry")
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["logger"] == "uvicorn.error" and "job_id" not in second
    assert "ValueError: boom" in third["exc"]


def test_json_lines_are_redacted(json_root: io.StringIO) -> None:
    logging.getLogger("httpx").info("HTTP Request: GET https://cdn.test/r/x.png?sig=s3cr3t-signature \"200 OK\"")
    logging.getLogger("fluxhook.other").warning("provider said: Authorization: Bearer sk-live-abcdefghijklmnop")
    text = json_root.getvalue()
    assert "s3cr3t-signature" not in text and "sk-live-abcdefghijklmnop" not in text
    assert len(lines(json_root)) == 2


def test_the_json_formatter_alone() -> None:
    record = logging.LogRecord("fluxhook.hooks", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.job_id = "fh_2"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world" and line["job_id"] == "fh_2" and line["level"] == "INFO"


def test_text_format_leaves_handlers_alone() -> None:
    root = logging.getLogger()
    before = [h.formatter for h in root.handlers]
    install_log_format("text")
    assert [h.formatter for h in root.handlers] == before


def test_settings() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"FLUXHOOK_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SettingsError, match="FLUXHOOK_LOG_FORMAT"):
        Settings.from_env({"FLUXHOOK_LOG_FORMAT": "xml"})
    token = "a-metrics-token-of-some-length"
    settings = Settings.from_env({"FLUXHOOK_METRICS_TOKEN": token})
    assert settings.metrics_token == token and token not in repr(settings)
    with pytest.raises(SettingsError, match="FLUXHOOK_METRICS_TOKEN"):
        Settings.from_env({"FLUXHOOK_METRICS_TOKEN": "short"})


def test_the_limiter_counts_per_key_and_reports_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    suppressed: list[int] = []
    limiter = LogLimiter(logging.getLogger("fluxhook.test"), clock, limit=3, window=60.0,
                         on_suppressed=suppressed.append)
    with caplog.at_level(logging.WARNING, "fluxhook.test"):
        logged = [limiter.log(logging.WARNING, "a", "line a %d", i) for i in range(5)]
        assert logged == [True, True, True, False, False]
        assert limiter.log(logging.WARNING, "b", "line b")
        clock.advance(60)
        assert limiter.log(logging.WARNING, "a", "line a again")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["line a 0", "line a 1", "line a 2", "line b",
                        "suppressed 2 more line(s) like 'a' in 60 s", "line a again"]
    assert sum(suppressed) == 2


def test_the_limiter_bounds_its_keys() -> None:
    limiter = LogLimiter(logging.getLogger("fluxhook.test"), Clock(), limit=1, max_keys=4)
    for i in range(100):
        limiter.log(logging.DEBUG, f"key {i}", "x")
    assert len(limiter._seen) <= 5


async def test_forged_callbacks_are_logged_once_per_reason_within_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        good = hook_path("bfl", job_id)
        forged = good.rsplit("/", 1)[0] + "/" + "A" * 43
        limit = h.rt.log_limiter.limit
        with caplog.at_level(logging.WARNING, "fluxhook.hooks"):
            for _ in range(limit + 5):
                assert (await h.client.post(forged, content=b"{}")).status_code == 401
            # Another reason has its own allowance: a valid token, a body that is not JSON.
            assert (await h.client.post(good, content=b"not json")).status_code in (400, 401)
            refused = [r for r in caplog.records if getattr(r, "event", None) == "callback-refused"]
            token_lines = [r for r in refused if r.reason == "callback token does not match"]
            assert len(token_lines) == limit
            assert all(r.levelno == logging.WARNING and r.job_id == job_id and r.provider == "bfl"
                       for r in token_lines)
            assert len(refused) == limit + 1
            h.clock.advance(60)
            assert (await h.client.post(forged, content=b"{}")).status_code == 401
        suppressed = [r for r in caplog.records if getattr(r, "event", None) == "log-suppressed"]
        (line,) = suppressed
        assert line.getMessage().startswith("suppressed 5 more line(s) like 'rejected: callback token does not match'")
        # The path token of the real callback URL never appears.
        assert good.rsplit("/", 1)[1] not in caplog.text
        from tests.receiver.obs.test_metrics import scrape, value

        assert value(await scrape(h), "fluxhook_log_lines_suppressed_total") == 5


async def test_a_stuck_download_says_why_on_the_job_and_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the results folder's parent should be")
    async with harness(tmp_path, results=blocker / "results") as h:
        from receiver.engine.jobs import submit

        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.settle()
        with caplog.at_level(logging.WARNING, "fluxhook.sweep"):
            report = await sweep_once(h.rt)
        assert report.actions["download-retry"] == 1
        stuck = await h.rt.store.get_job(job.id)
        assert stuck is not None and stuck.status == Status.SUCCEEDED
        assert stuck.note is not None and stuck.note.startswith(DOWNLOAD_NOTE)
        assert "cannot write" in stuck.note and "ENOTDIR" in stuck.note
        assert "?" not in stuck.note  # no signed URL query
        (record,) = [r for r in caplog.records if getattr(r, "event", None) == "download-retry"]
        assert record.levelno == logging.WARNING and record.job_id == job.id and record.provider == "bfl"
        assert "cannot write" in record.getMessage() and "?" not in record.getMessage()
        # Fixed: the next attempt stores the file and clears the note.
        blocker.unlink()
        h.rt.results.folder.mkdir(parents=True)  # type: ignore[attr-defined]
        h.clock.advance(3600)
        await sweep_once(h.rt)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED and done.note is None


def test_uvicorn_log_config_makes_its_own_lines_json() -> None:
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    from receiver.obs.logs import uvicorn_log_config

    assert uvicorn_log_config("text") == LOGGING_CONFIG
    config = uvicorn_log_config("json")
    assert all(f == {"()": JsonFormatter} for f in config["formatters"].values())
    logger = logging.getLogger("uvicorn.error")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate,
                    logging.getLogger(name).level) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}
    try:
        logging.config.dictConfig(config)
        buffer = io.StringIO()
        (handler,) = logging.getLogger("uvicorn").handlers
        handler.setStream(buffer)  # type: ignore[attr-defined]
        logger.info("Started server process [%d]", 42)
        assert json.loads(buffer.getvalue()) | {"time": "t"} == {
            "time": "t", "level": "INFO", "logger": "uvicorn.error", "message": "Started server process [42]"}
    finally:
        for name, (handlers, propagate, level) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate, lg.level = handlers, propagate, level


_BUILD_ONLY = """
import asyncio, json, logging
from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.web.app import create_app

def state():
    names = ("", "httpx", "uvicorn", "fluxhook", "fluxhook.hooks")
    return {n: [len(logging.getLogger(n).filters), len(logging.getLogger(n).handlers)] for n in names}

async def main():
    before = state()
    settings = Settings.from_env()
    async with Runtime.open(settings) as rt:
        create_app(settings, runtime=rt, workers=False)
        print(json.dumps([before, state()]))

asyncio.run(main())
"""


def test_building_a_runtime_and_an_app_leaves_the_process_logging_alone(tmp_path: Path) -> None:
    """Constructors change nothing process-wide: logging is the entry points' (configure_logging)."""
    env = {"FLUXHOOK_SECRET_KEY": "k" * 40, "FLUXHOOK_DB": str(tmp_path / "l.db"), "FLUXHOOK_LOG_FORMAT": "json",
           "FLUXHOOK_RESULTS": str(tmp_path / "results"), "FLUXHOOK_PUBLIC_URL": "https://hooks.example",
           "PATH": "/usr/bin:/bin"}
    ran = subprocess.run([sys.executable, "-c", _BUILD_ONLY], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[3], timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    before, after = json.loads(ran.stdout)
    assert before == after

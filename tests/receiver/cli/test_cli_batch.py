"""`fluxhook batch`: validation first, idempotent resume, provider caps, image inputs, exit codes.

The simulator is a real loopback server; the CLI runs in a thread (it runs its own event loop)
with an environment pointing at it. No receiver is served: results come by the CLI's own sweep
(polling), as for `submit --wait` on a host without a public URL reachable by the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from receiver.cli.batch import BatchLine, line_key, read_lines, sent_params, validate
from receiver.cli.common import CLIError
from receiver.cli.main import main
from receiver.config.settings import Settings
from receiver.serve.background import bind, serve_in_background
from submitter.simulator import Faults, Simulator, png_image
from tests.e2e.support import env_for
from tests.receiver.cli.bounded_cli import run_cli

pytestmark = pytest.mark.anyio


@dataclass
class Sim:
    sim: Simulator
    url: str
    env: dict[str, str]


@contextlib.asynccontextmanager
async def simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, receiver: bool = False) -> AsyncIterator[Sim]:
    """The simulator on loopback and the CLI's environment pointing at it (and, with `receiver`, a
    served receiver on the same ledger, so callbacks arrive and are kept)."""
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=())
    sim.add_rule("doomed", Faults(outcome="error", runtime=0.05))
    sim.add_rule("hold", Faults(drop=True, runtime=3600))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        public = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env = env_for(tmp_path / "ledger", sim_url, public) | {"FLUXHOOK_POLL_AFTER": "0.2"}
        (tmp_path / "ledger").mkdir(exist_ok=True)
        for name in ("FLUXHOOK_API_URL", "FLUXHOOK_API_KEY", "FLUXHOOK_FORWARD_URL", "FLUXHOOK_REDIS_URL",
                     "FLUXHOOK_NATS_URL"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if receiver:
            from receiver.web.app import create_app

            settings = Settings.from_env(env)
            async with serve_in_background(create_app(settings), sock):
                yield Sim(sim, sim_url, env)
        else:
            sock.close()
            yield Sim(sim, sim_url, env)
    await sim.aclose()


async def fluxhook(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    async with asyncio.timeout(60):
        code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def jobs_in(env: dict[str, str]) -> list[tuple[str, str]]:
    db = Path(env["FLUXHOOK_DB"])
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return conn.execute("SELECT id, status FROM jobs ORDER BY created_at").fetchall()
        except sqlite3.OperationalError:
            return []


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def line(prompt: str, **extra: object) -> dict[str, object]:
    return {"provider": "bfl", "model": "flux-dev", "prompt": prompt, **extra}


# -- parsing and validation (no simulator needed) ---------------------------------------

def test_bad_lines_are_named_and_nothing_is_submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLUXHOOK_DB", str(tmp_path / "b.db"))
    monkeypatch.setenv("FLUXHOOK_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("FLUXHOOK_PUBLIC_URL", "https://hooks.example.com")
    path = write(tmp_path / "jobs.jsonl",
                 line("fine"),
                 "{not json",
                 "",
                 "# a comment",
                 line("x", provider="nope"),
                 line("y", model="bad/model"),
                 {"provider": "bfl", "model": "flux-dev"},
                 line("z", params={"input_image": "@missing.png"}),
                 line("w", colour="red"),
                 line("v", params="[1]"))
    assert main(["batch", str(path)]) == 2
    err = capsys.readouterr().err
    for number, words in ((2, "not valid JSON"), (5, "unknown provider 'nope'"), (6, "is not a single name"),
                          (7, "prompt is missing"), (8, "no such file"), (9, "unknown field(s) colour"),
                          (10, "params must be a JSON object")):
        assert f"jobs.jsonl:{number}: " in err and words in err, (number, words, err)
    assert "jobs.jsonl:1:" not in err and "7 bad line(s); nothing submitted" in err
    assert jobs_in({"FLUXHOOK_DB": str(tmp_path / "b.db")}) == []


def test_csv_lines_with_json_cells(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text('provider,model,prompt,params,metadata\n'
                    'bfl,flux-dev,a fox,"{""seed"": 3}","{""who"": ""me""}"\n'
                    '\n'
                    'replicate,black-forest-labs/flux-schnell,an owl,,\n'
                    'bfl,flux-dev,bad,"{oops",\n')
    items = list(read_lines(path))
    assert isinstance(items[0], BatchLine) and items[0].number == 2
    assert items[0].params == {"prompt": "a fox", "seed": 3} and items[0].metadata == {"who": "me"}
    assert isinstance(items[1], BatchLine) and items[1].number == 4 and items[1].provider == "replicate"
    assert items[2] == (5, "params is not valid JSON: Expecting property name enclosed in double quotes: "
                           "line 1 column 2 (char 1)")


def test_idempotency_key_names_file_line_and_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    one = BatchLine(1, '{"x": 1}')
    assert line_key(a, one) == line_key(a, BatchLine(1, '{"x": 1}'))
    assert line_key(a, one)[0] != line_key(b, one)[0]
    assert line_key(a, one)[0] != line_key(a, BatchLine(2, '{"x": 1}'))[0]
    assert line_key(a, one)[0] != line_key(a, BatchLine(1, '{"x": 2}'))[0]


def test_images_in_lines_are_resolved_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(png_image("t"))
    path = write(tmp_path / "j.jsonl", line("edit", params={"input_image": "@in.png", "note": "@@x"}),
                 {"provider": "replicate", "model": "black-forest-labs/flux-kontext-pro", "prompt": "p",
                  "params": {"input_image": "@in.png"}})
    lines, problems = validate(Settings.from_env({}), path)
    assert problems == []
    assert [x.params["input_image"] for x in lines] == ["@in.png", "@in.png"]  # checked, not read: read when sent
    first, second = (sent_params(path, x) for x in lines)
    assert first["input_image"].startswith("iVBORw0KGgo") and first["note"] == "@x"  # raw base64 of a PNG
    assert second["input_image"].startswith("data:image/png;base64,iVBORw0KGgo")
    (tmp_path / "in.png").unlink()  # gone between validation and sending: the line is named
    with pytest.raises(CLIError, match=r"j\.jsonl:2: input_image: no such file .*run the batch again to resume"):
        sent_params(path, lines[1])


def test_check_refuses_fifos_and_devices_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # nobody writes to it: a blocking open would wait forever
    path = write(tmp_path / "jobs.jsonl", line("a", params={"input_image": "@pipe.png"}),
                 line("b", params={"input_image": "@/dev/zero"}), line("c"))
    ran = run_cli("batch", str(path), "--check", env={"FLUXHOOK_DB": str(tmp_path / "b.db")})
    assert ran.returncode == 2, ran.stderr
    assert f"jobs.jsonl:1: input_image: {str(tmp_path / 'pipe.png')!r} is not a regular file (a FIFO)" in ran.stderr
    assert "jobs.jsonl:2: input_image: '/dev/zero' is not a regular file (a character device)" in ran.stderr
    assert "2 bad line(s); nothing submitted" in ran.stderr, ran.stderr


def test_validation_keeps_no_image_bytes(tmp_path: Path) -> None:
    # 30 lines naming one 2 MB image: validation held 30 encodings (80 MB) before.
    size = 2_000_000
    (tmp_path / "big.png").write_bytes(png_image("t") + b"\0" * size)
    path = write(tmp_path / "j.jsonl", *(line(f"p{i}", params={"input_image": "@big.png"}) for i in range(30)))
    settings = Settings.from_env({})
    tracemalloc.start()
    try:
        lines, problems = validate(settings, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size // 4, peak
    assert problems == [] and len(lines) == 30
    assert all(x.params["input_image"] == "@big.png" for x in lines)


# -- against the simulator --------------------------------------------------------------

async def test_batch_runs_resumes_and_reports_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.png").write_bytes(png_image("input"))
    path = write(tmp_path / "jobs.jsonl",
                 line("a red fox", params={"seed": 1}, metadata={"row": "a"}),
                 line("an edit", params={"input_image": "@in.png"}),
                 line("doomed prompt"))
    async with simulator(tmp_path, monkeypatch) as s:
        code, out, err = await fluxhook(capsys, "batch", str(path), "--interval", "0.05")
        assert code == 1, err
        assert "3 job(s), 3 new, 0 already recorded" in err
        assert "line 3: fh_" in out and "failed" in out
        assert "1 failed, 2 stored" in err
        submits = s.sim.stats()["totals"]["submit_requests"]
        assert submits == 3
        # Again: every line is found by its key; nothing is sent twice.
        code, out, err = await fluxhook(capsys, "batch", str(path), "--interval", "0.05", "--json")
        assert code == 1 and "3 job(s), 0 new, 3 already recorded (resumed)" in err
        assert s.sim.stats()["totals"]["submit_requests"] == submits
        rows = [json.loads(r) for r in out.splitlines()]
        assert [r["line"] for r in rows] == [1, 2, 3] and [r["status"] for r in rows] == ["stored", "stored", "failed"]
        # A line added later is the only new job.
        with path.open("a") as fp:
            fp.write(json.dumps(line("a late fox")) + "\n")
        code, out, err = await fluxhook(capsys, "batch", str(path), "--interval", "0.05")
        assert "4 job(s), 1 new, 3 already recorded" in err
        assert s.sim.stats()["totals"]["submit_requests"] == submits + 1
        code, out, _ = await fluxhook(capsys, "status", rows[1]["id"], "--json")
        view = json.loads(out)
        assert view["params"]["input_image"].startswith("iVBORw0KGgo") and "chars)" in view["params"]["input_image"]
        assert view["prompt"] == "an edit" and view["via"] == "poll"
    assert len(jobs_in(s.env)) == 4


async def test_a_timeout_exits_3_and_a_rerun_follows_the_same_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "jobs.jsonl", line("hold me"), line("a fox"))
    async with simulator(tmp_path, monkeypatch) as s:
        code, _, err = await fluxhook(capsys, "batch", str(path), "--interval", "0.05", "--timeout", "0.5")
        assert code == 3 and "not finished" in err and f"fluxhook batch {path}" in err
        code, _, err = await fluxhook(capsys, "batch", str(path), "--interval", "0.05", "--timeout", "0.3")
        assert code == 3 and "0 new, 2 already recorded" in err
        assert s.sim.stats()["totals"]["submit_requests"] == 2
    assert len(jobs_in(s.env)) == 2


async def test_provider_caps_bound_what_runs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "jobs.jsonl", *(line(f"hold {i}") for i in range(3)))
    async with simulator(tmp_path, monkeypatch) as s:
        monkeypatch.setenv("FLUXHOOK_BFL_MAX_ACTIVE", "2")
        code, _, _ = await fluxhook(capsys, "batch", str(path), "--interval", "0.05", "--timeout", "0.5")
        assert code == 3
        assert s.sim.stats()["totals"]["submit_requests"] == 2  # the third waits for a free slot
    statuses = sorted(status for _, status in jobs_in(s.env))
    assert statuses.count("queued") == 1 and set(statuses) - {"queued"} <= {"submitted", "running"}

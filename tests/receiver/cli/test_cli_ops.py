"""`fluxhook events|cancel|retry|replay|report`, exit codes and ISO times, against the loopback simulator."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
from pathlib import Path

import pytest

from receiver.cli.jobs import submit
from receiver.config.settings import Settings
from receiver.engine.report import reconcile
from tests.receiver.cli.test_cli_batch import fluxhook, simulator

pytestmark = pytest.mark.anyio

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def submit_argv(prompt: str, *extra: str) -> list[str]:
    return ["submit", "--provider", "bfl", "--model", "flux-dev", "--prompt", prompt, *extra]


async def test_events_show_the_timeline_and_replay_is_harmless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch, receiver=True):
        code, out, err = await fluxhook(capsys, *submit_argv("a red fox", "--wait", "--timeout", "30"))
        assert code == 0, err
        job_id = out.splitlines()[0]
        assert "status=stored" in out and "via=callback" in out and ISO.search(out)
        code, out, _ = await fluxhook(capsys, "events", job_id)
        assert code == 0
        kinds = [line.split()[1] for line in out.splitlines() if ISO.match(line)]
        assert kinds[:2] == ["created", "submitted"] and "callback" in kinds and "event" in kinds
        assert "job.stored" in out and "said succeeded" in out and "now: stored" in out
        callback = next(line for line in out.splitlines() if " callback " in line)
        event_id = re.search(r"\[(\d+)\]", callback).group(1)  # type: ignore[union-attr]
        code, out, _ = await fluxhook(capsys, "events", job_id, "--json")
        assert any(r["kind"] == "callback" and str(r["id"]) == event_id for r in json.loads(out))
        code, out, _ = await fluxhook(capsys, "replay", event_id)
        assert code == 0 and "no change (job is stored)" in out
        code, _, err = await fluxhook(capsys, "replay", "987654")
        assert code == 2 and "no kept callback 987654" in err
        code, _, err = await fluxhook(capsys, "replay", "evt_x")
        assert code == 2 and "event ids are numbers" in err
        code, _, err = await fluxhook(capsys, "events", "fh_nobody")
        assert code == 2 and "no job 'fh_nobody'" in err


async def test_cancel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async with simulator(tmp_path, monkeypatch) as s:
        code, out, _ = await fluxhook(capsys, "submit", "--provider", "replicate", "--model",
                                      "black-forest-labs/flux-schnell", "--prompt", "hold this")
        job_id = out.strip()
        code, out, _ = await fluxhook(capsys, "cancel", job_id)
        assert code == 0 and f"{job_id} canceled" in out
        assert s.sim.stats()["totals"]["cancels"] == 1  # Replicate shapes have a cancel endpoint
        code, out, _ = await fluxhook(capsys, "status", job_id, "--json")
        assert json.loads(out)["status"] == "canceled"
        code, out, _ = await fluxhook(capsys, *submit_argv("a fox", "--wait", "--timeout", "30"))
        stored = out.splitlines()[0]
        code, _, err = await fluxhook(capsys, "cancel", stored)
        assert code == 1 and "only queued, submitted and running jobs can be canceled" in err
        code, _, err = await fluxhook(capsys, "cancel", "fh_nobody")
        assert code == 2


async def test_retry_downloads_again_after_our_download_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch) as s:
        monkeypatch.setenv("FLUXHOOK_DOWNLOAD_HOSTS", "cdn.elsewhere.example")
        code, out, _ = await fluxhook(capsys, *submit_argv("a fox", "--wait", "--timeout", "30"))
        assert code == 1 and "status=failed" in out
        job_id = out.splitlines()[0]
        code, _, err = await fluxhook(capsys, *submit_argv("doomed fox", "--wait", "--timeout", "30"))
        assert code == 1
        monkeypatch.setenv("FLUXHOOK_DOWNLOAD_HOSTS", s.env["FLUXHOOK_DOWNLOAD_HOSTS"])
        code, out, err = await fluxhook(capsys, "report", "--json")
        total = json.loads(out)["providers"][-1]
        assert total["provider"] == "total" and total["failed_download"] == 1 and total["failed_by_provider"] == 1
        assert total["paid_not_delivered"] == 1 and json.loads(out)["orphan_callbacks"] is None
        code, out, err = await fluxhook(capsys, "retry", job_id, "--timeout", "30")
        assert code == 0, err
        assert "reopened" in err and "status=stored" in out
        assert "note=" not in out  # the retry's note went with the retry (the store clears it when stored)
        code, _, err = await fluxhook(capsys, "retry", job_id)
        assert code == 2 and "cannot be retried: it is stored" in err
        code, out, _ = await fluxhook(capsys, "list", "--status", "failed", "--json")
        doomed = json.loads(out)[0]["id"]
        code, _, err = await fluxhook(capsys, "retry", doomed)
        assert code == 2 and "never reported a result" in err
        code, out, _ = await fluxhook(capsys, "report", "--csv")
        rows = {r["provider"]: r for r in csv.DictReader(io.StringIO(out))}
        assert rows["total"]["stored"] == "1" and rows["total"]["rescued_by_poll"] == "1"
        assert rows["total"]["paid_not_delivered"] == "0" and rows["bfl"]["jobs"] == "2"
        code, out, _ = await fluxhook(capsys, "report", "--since", "1h")
        assert code == 0 and "rescued_by_poll" in out and "orphan callbacks: not recorded" in out
        code, _, err = await fluxhook(capsys, "report", "--since", "yesterday-ish")
        assert code == 2 and "--since takes" in err


async def test_wait_timeout_is_exit_3_and_times_are_iso(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch):
        code, out, err = await fluxhook(capsys, *submit_argv("hold on", "--wait", "--timeout", "0.2"))
        assert code == 3 and "not finished after" in err and "fluxhook status fh_" in err
        code, out, _ = await fluxhook(capsys, "list", "--json")
        row = json.loads(out)[0]
        assert ISO.fullmatch(row["created_at"]) and ISO.fullmatch(row["updated_at"])


async def test_ctrl_c_during_submit_wait_names_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch) as s:
        settings = Settings.from_env(s.env)
        args = argparse.Namespace(provider="bfl", model="flux-dev", prompt="hold it", param=None, events=None,
                                  wait=True, timeout=60.0, json=False)
        task = asyncio.create_task(submit(args, settings))
        async with asyncio.timeout(20):
            while s.sim.stats()["totals"]["submit_requests"] == 0:
                await asyncio.sleep(0.01)  # polling for the event, not timing
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    err = capsys.readouterr().err
    assert "interrupted; job fh_" in err and "`fluxhook status fh_" in err


def test_reconcile_counts() -> None:
    base = {"provider_job_id": "p", "submitted_at": 1.0, "callback_at": None, "polls": 0, "error": None,
            "files": 0, "stored_files": 0, "stored_events": 0, "callbacks": 0}
    rows = reconcile([
        base | {"id": "a", "provider": "bfl", "status": "stored", "files": 1, "stored_files": 1, "polls": 2,
                "stored_events": 2},
        base | {"id": "b", "provider": "bfl", "status": "expired", "files": 1},
        base | {"id": "c", "provider": "replicate", "status": "moderated", "callback_at": 5.0, "callbacks": 2},
        base | {"id": "d", "provider": "replicate", "status": "queued", "provider_job_id": None, "submitted_at": None},
    ])
    by = {r["provider"]: r for r in rows}
    assert [r["provider"] for r in rows] == ["bfl", "replicate", "total"]
    assert by["bfl"]["rescued_by_poll"] == 1 and by["bfl"]["delivered_twice"] == 1
    assert by["bfl"]["expired_before_download"] == 1 and by["bfl"]["paid_not_delivered"] == 1
    assert by["replicate"]["submitted"] == 1 and by["replicate"]["in_progress"] == 1
    assert by["total"]["jobs"] == 4 and by["total"]["callbacks_kept"] == 2


async def test_image_params_on_submit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from submitter.simulator import png_image

    async with simulator(tmp_path, monkeypatch):
        code, _, err = await fluxhook(capsys, *submit_argv("edit", "--param", f"input_image=@{tmp_path}/none.png"))
        assert code == 2 and "input_image: no such file" in err
        (tmp_path / "notes.txt").write_text("hello")
        code, _, err = await fluxhook(capsys, *submit_argv("edit", "--param", f"input_image=@{tmp_path}/notes.txt"))
        assert code == 2 and "not a PNG, JPEG, WebP or GIF" in err
        code, _, err = await fluxhook(capsys, *submit_argv("edit", "--param", "seed=@3"))
        assert code == 2 and "seed: takes no image" in err
        code, out, _ = await fluxhook(capsys, "list", "--json")
        assert json.loads(out) == []  # nothing was recorded
        (tmp_path / "in.png").write_bytes(png_image("x"))
        code, out, err = await fluxhook(capsys, *submit_argv("edit", "--param", f"input_image=@{tmp_path}/in.png",
                                                             "--wait", "--timeout", "30", "--json"))
        assert code == 0, err
        view = json.loads(out)
        assert view["params"]["input_image"].startswith("iVBORw0KGgo") and view["status"] == "stored"


async def test_database_commands_refuse_an_api_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The commands the API has no route for refuse FLUXHOOK_API_URL, saying why, and never open a ledger."""
    monkeypatch.setenv("FLUXHOOK_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FLUXHOOK_DB", str(tmp_path / "x.db"))
    for argv, why in ((["replay", "1"], "the API has no route"), (["deliveries"], "the API has no route"),
                      (["redeliver", "--failed"], "the API has no route"), (["sinks"], "the API has no route"),
                      (["sweep"], "POST /v1/sweep"), (["migrate"], "schema")):
        code, _, err = await fluxhook(capsys, *argv)
        assert code == 2 and "not through FLUXHOOK_API_URL" in err and why in err, argv
    assert not (tmp_path / "x.db").exists()

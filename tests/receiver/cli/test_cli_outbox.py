"""`fluxhook deliveries`, `redeliver` and `sinks` against a real SQLite ledger and an endpoint that is down."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from receiver.cli.main import main
from receiver.config.settings import Settings
from receiver.store import Job
from receiver.store.sqlite import SQLiteStore
from submitter.status import Status

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
TOKEN = "tok-do-not-show-0123"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLUXHOOK_DB", str(tmp_path / "cli.db"))
    monkeypatch.setenv("FLUXHOOK_RESULTS", str(tmp_path / "results"))
    # Port 9 (discard) on loopback: nothing listens, every attempt is refused at once.
    monkeypatch.setenv("FLUXHOOK_FORWARD_URL", f"http://127.0.0.1:9/hook?token={TOKEN}")
    monkeypatch.setenv("FLUXHOOK_FORWARD_SECRET", SECRET)
    return tmp_path


def _canceled_job(db: str, job_id: str) -> str:
    async def run() -> str:
        store = SQLiteStore(db)
        await store.open()
        try:
            now = 1_800_000_000.0
            await store.create_job(Job(id=job_id, provider="bfl", model="flux-dev", params={}, status=Status.QUEUED,
                                       created_at=now, deadline_at=now + 60))
            await store.finish(job_id, Status.CANCELED, now=now)
            [event] = await store.events_after(0, job_id=job_id)
            return event.id
        finally:
            await store.close()

    return asyncio.run(run())


def test_a_refused_delivery_is_listed_with_its_attempts_and_no_secret(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sinks", "--json"]) == 0  # first sight: the sink is owed what happens from now on
    [sink] = json.loads(capsys.readouterr().out)
    assert sink["kind"] == "webhook" and sink["configured"] and sink["pending"] == 0
    assert TOKEN not in json.dumps(sink)
    event_id = _canceled_job(Settings.from_env().db, "fh_a")
    assert main(["sweep", "--json"]) == 0
    capsys.readouterr()
    assert main(["deliveries", "--attempts", "--json"]) == 0
    out = capsys.readouterr().out
    [row] = json.loads(out)
    assert row["event"] == event_id and row["type"] == "job.canceled" and row["state"] == "pending"
    assert row["attempts"] == 1 and row["attempts_log"][0]["code"] is None and row["attempts_log"][0]["error"]
    assert TOKEN not in out
    assert main(["deliveries", "--failed"]) == 0
    assert "no deliveries failed" in capsys.readouterr().out
    assert main(["sinks"]) == 0
    assert "pending=1" in capsys.readouterr().out


def test_redeliver_and_enable_name_what_they_cannot_find(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["redeliver"]) == 2
    assert "event id" in capsys.readouterr().err
    assert main(["redeliver", "evt_nope"]) == 2
    assert "no event 'evt_nope'" in capsys.readouterr().err
    assert main(["sinks", "--enable", "webhook:nope"]) == 2
    assert "no sink 'webhook:nope'" in capsys.readouterr().err


def test_redeliver_an_event_makes_it_due_again(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sinks"]) == 0
    event_id = _canceled_job(Settings.from_env().db, "fh_b")
    assert main(["redeliver", event_id, "--now"]) == 0
    out = capsys.readouterr().out
    assert "1 delivery due again" in out and "retrying" in out
    assert main(["deliveries", "--event", event_id, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["attempts"] == 1 and row["state"] == "pending"


def test_a_bad_forward_secret_is_a_clear_error(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLUXHOOK_FORWARD_SECRET", "not-a-whsec")
    assert main(["sinks"]) == 2
    assert "FLUXHOOK_FORWARD_SECRET" in capsys.readouterr().err


def test_sinks_says_why_a_nats_sink_cannot_start(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """NATS on loopback (the CI's), a subject no stream covers: the command names the fix."""
    monkeypatch.setenv("FLUXHOOK_NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("FLUXHOOK_NATS_SUBJECT", "fluxhook-no-stream.events")
    assert main(["sinks"]) == 0
    out = capsys.readouterr().out
    assert "cannot start: no JetStream stream covers subject 'fluxhook-no-stream.events'" in out
    assert "nats stream add" in out

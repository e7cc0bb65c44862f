"""Hostile conditions: a locked store, slow bodies, secrets in logs, the audit log's size."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
from pathlib import Path

import httpx
import pytest

from receiver.cli.main import main
from receiver.engine.jobs import callback_url, submit
from receiver.engine.sweep import sweep_once
from submitter.signing import derive_job_keys, sign_bfl
from submitter.simulator import Faults
from submitter.status import Status
from tests import ledger
from tests.harness import MASTER, PUBLIC, harness

pytestmark = pytest.mark.anyio


def hook(provider: str, job_id: str) -> str:
    return callback_url(PUBLIC, MASTER, provider, job_id)[0].removeprefix(PUBLIC)


async def test_a_locked_store_is_503_and_the_retry_lands(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(drop=True, runtime=1e6), busy_timeout=0.05) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})
        body = json.dumps({"id": job.provider_job_id, "status": "Pending"}).encode()
        blocker = sqlite3.connect(h.settings.db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = await h.client.post(hook("bfl", job.id), content=body)
            assert response.status_code == 503 and response.headers["retry-after"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        response = await h.client.post(hook("bfl", job.id), content=body)
        assert response.status_code == 200
        assert await ledger.count_events(h.rt.store, job.id) == 1


async def test_a_slow_body_is_cut_off_with_408(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(drop=True, runtime=1e6), body_timeout=0.05) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})

        async def trickle():
            yield b'{"id": '
            await asyncio.sleep(30)  # cut off long before this ends
            yield b"}"

        async with asyncio.timeout(10):
            response = await h.client.post(hook("bfl", job.id), content=trickle())
        assert response.status_code == 408
        assert await ledger.count_events(h.rt.store, job.id) == 0


async def test_rejected_requests_are_counted_not_stored(tmp_path: Path) -> None:
    ops = "ops-token-0123456789"  # /healthz shows its counters to operators only
    async with harness(tmp_path, faults=Faults(drop=True, runtime=1e6), metrics_token=ops) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})
        for _ in range(50):
            forged = hook("bfl", job.id).rsplit("/", 1)[0] + "/" + "B" * 43
            assert (await h.client.post(forged, content=b"x" * 1000)).status_code == 401
        assert h.rt.metrics["rejected"] == 50
        rows = await ledger.rows(h.rt.store, "SELECT COUNT(*) FROM events")
        assert rows[0][0] == 0
        health = await h.client.get("/healthz", headers={"authorization": f"Bearer {ops}"})
        assert health.json()["callbacks"]["rejected"] == 50


async def test_audit_events_are_pruned_after_the_retention(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0), event_retention=3600.0) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})
        await h.settle()
        await sweep_once(h.rt)
        assert await ledger.count_events(h.rt.store, job.id) == 1
        h.clock.advance(3599)
        await sweep_once(h.rt)
        assert await ledger.count_events(h.rt.store, job.id) == 1
        h.clock.advance(2)
        report = await sweep_once(h.rt)
        assert report.actions["events-pruned"] == 1 and await ledger.count_events(h.rt.store, job.id) == 0
        assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]


async def test_no_secret_reaches_logs_errors_audit_or_cli(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with harness(tmp_path, faults=Faults(runtime=0.0, signature="echo")) as h:
        h.sim.add_rule("stale", Faults(runtime=0.0, expired_url=True))
        h.sim.add_rule("down", Faults(runtime=0.0, submit_errors=(503,) * 6))
        h.sim.add_rule("bad", Faults(runtime=0.0, outcome="error"))
        jobs = [await submit(h.rt, p, "flux-dev", {"prompt": prompt})
                for p, prompt in (("bfl", "ok"), ("deerapi", "stale"), ("cometapi", "down"), ("bfl", "bad"))]
        await h.settle()
        # Attacks and garbage on the way.
        for job in jobs:
            await h.client.post(hook(job.provider, job.id).rsplit("/", 1)[0] + "/nope", content=b"{}")
            await h.client.post(hook(job.provider, job.id), content=b"not json")
        h.clock.advance(120)
        await sweep_once(h.rt)
        secrets = {MASTER.decode(), base64.b64encode(MASTER).decode(), "test-key"}
        for job in jobs:
            keys = derive_job_keys(MASTER, job.provider, job.id)
            secrets |= {keys.token, keys.webhook_secret}
            secrets |= {f.url.split("?", 1)[1] for f in await h.rt.store.files(job.id) if "?" in f.url}
        audit = await ledger.rows(h.rt.store, "SELECT headers, body, verdict FROM events")
        echoed = [json.loads(r["headers"]) for r in audit if "x-webhook-secret" in json.loads(r["headers"])]
        assert echoed  # the callback that echoed its secret in X-Webhook-Secret was recorded...
        assert all(h["x-webhook-secret"] == "[redacted]" for h in echoed)  # ...with that header redacted
        jobs_view = [(await h.rt.store.get_job(j.id)).public() for j in jobs]  # type: ignore[union-attr]
        assert any(v["error"] for v in jobs_view)
    monkeypatch.setenv("FLUXHOOK_DB", h.settings.db)
    monkeypatch.setenv("FLUXHOOK_RESULTS", str(h.settings.results))
    for job in jobs:  # the CLI runs its own event loop: give it a thread
        assert await asyncio.to_thread(main, ["status", job.id, "--json"]) == 0
    assert await asyncio.to_thread(main, ["list", "--json"]) == 0
    texts = [
        caplog.text,
        capsys.readouterr().out,
        json.dumps(jobs_view),
        " ".join(str(r["headers"]) + str(r["verdict"]) for r in audit),
    ]
    for text in texts:
        for secret in secrets:
            assert secret not in text


async def test_a_broken_download_host_never_shows_the_signature(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    caplog.set_level(logging.DEBUG)
    async with harness(tmp_path, faults=Faults(runtime=0.0), cdn_transport=httpx.MockTransport(refuse)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})
        await h.settle()
        await sweep_once(h.rt)
        (record,) = await h.rt.store.files(job.id)
        signature = record.url.split("sig=", 1)[1]
        current = await h.rt.store.get_job(job.id)
        assert current is not None and current.status == Status.SUCCEEDED  # will retry
        assert signature not in caplog.text and signature not in (current.error or "")


def test_the_signature_helpers_never_echo_their_inputs() -> None:
    body = b'{"id": "x"}'
    with pytest.raises(Exception) as info:
        from submitter.signing import verify_bfl

        verify_bfl(body, {"x-webhook-secret": "guess-1234"}, "real-secret-5678")
    assert "guess-1234" not in str(info.value) and "real-secret-5678" not in str(info.value)
    assert sign_bfl("k", body) not in str(info.value)

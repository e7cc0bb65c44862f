"""Secrets never reach storage or output: the redactor removes every secret fluxhook knows (provider keys,
derived callback tokens and webhook secrets, the master key, the database password) and credential shapes,
from the rows, the CLI's output and the logs, whatever a provider echoes back (README "Security")."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
import pytest

from receiver.cli.main import main as cli_main
from receiver.engine.jobs import callback_url, submit
from receiver.engine.sweep import sweep_once
from receiver.obs.redaction import Redactor
from submitter.signing import derive_job_keys
from submitter.status import Status
from tests import ledger
from tests.harness import MASTER, PUBLIC, harness
from tests.receiver.engine.test_replicate import SECRET, FakeReplicate, deliver, fake_harness, new_prediction, with_key

pytestmark = pytest.mark.anyio


def test_the_redactor_removes_every_known_secret_and_credential_shapes() -> None:
    job_id = "fh_" + "ab" * 16
    keys = derive_job_keys(MASTER, "cometapi", job_id)
    redactor = Redactor(["k-comet-0123456789", None, "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="], master=MASTER,
                        providers=["bfl", "cometapi"])
    text = (
        f"Incorrect API key provided: Bearer k-comet-0123456789 for {PUBLIC}/hooks/cometapi/{job_id}/{keys.token}"
        f" secret={keys.webhook_secret} x-key: abcdef123456 sig c2VjcmV0LXNlY3JldC1zZWNyZXQ="
        f" https://delivery.bfl.ai/r/sample.png?se=2026&sig=SIGNATURE {MASTER.decode()}"
    )
    clean = redactor.scrub(text) or ""
    for secret in ("k-comet-0123456789", keys.token, keys.webhook_secret, "abcdef123456", "SIGNATURE",
                   "c2VjcmV0LXNlY3JldC1zZWNyZXQ=", MASTER.decode()):
        assert secret not in clean
    assert "Incorrect API key provided" in clean and job_id in clean  # the useful words stay
    # The job's own secrets go even when the text does not name the job:
    assert keys.webhook_secret not in (redactor.scrub(f"echo {keys.webhook_secret}", job_id=job_id) or "")
    assert redactor.scrub(None) is None and redactor.scrub("") == ""
    assert redactor.scrub("a plain message, nothing secret") == "a plain message, nothing secret"


class EchoingProvider:
    """A provider that quotes back whatever it was sent: headers, body and URL."""

    def __init__(self, status: int) -> None:
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        echoed = f"Incorrect API key provided: {request.headers.get('authorization') or request.headers.get('x-key')}"
        echoed += f" request {request.url} {request.content.decode()}"
        return httpx.Response(self.status, json={"detail": echoed})


@pytest.mark.parametrize("status", [401, 422, 503, 524])
async def test_an_echoing_provider_leaks_nothing_into_rows_cli_or_logs(
    tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with harness(tmp_path, api_transport=httpx.MockTransport(EchoingProvider(status))) as h:
        job = await submit(h.rt, "cometapi", "flux-dev", {"prompt": "p"})
        keys = derive_job_keys(MASTER, "cometapi", job.id)
        stored = await h.rt.store.get_job(job.id)
        assert stored is not None and (stored.error or stored.note)  # the provider's words were kept...
        assert "Incorrect API key provided" in (stored.error or stored.note or "")
        logging.getLogger("fluxhook.sweep").warning("job %s: %s", job.id, stored.note or stored.error)
        rows = await ledger.rows(h.rt.store, "SELECT * FROM jobs")
    monkeypatch.setenv("FLUXHOOK_DB", h.settings.db)
    monkeypatch.setenv("FLUXHOOK_RESULTS", str(h.settings.results))
    assert await asyncio.to_thread(cli_main, ["status", job.id, "--json"]) == 0
    assert await asyncio.to_thread(cli_main, ["list"]) == 0
    texts = [json.dumps([dict(r) for r in rows]), capsys.readouterr().out, caplog.text]
    for text in texts:
        for secret in ("test-key", keys.token, keys.webhook_secret):  # ...but none of our secrets
            assert secret not in text, text


async def test_replicate_callback_bodies_are_stored_without_our_callback_token(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        url, _ = callback_url(PUBLIC, MASTER, "replicate", job_id)
        token = derive_job_keys(MASTER, "replicate", job_id).token
        body = {**fake.finish(pid), "webhook": url, "urls": {"get": f"https://api.replicate.com/v1/predictions/{pid}"}}
        assert (await deliver(h, "replicate", job_id, body, msg_id="m1", secret=SECRET)).status_code == 200
        (row,) = await ledger.rows(h.rt.store, "SELECT body, headers FROM events")
        assert token not in row["body"].decode() and token not in row["headers"]
        assert json.loads(row["body"])["webhook"].endswith("/hooks/replicate/" + job_id + "/[redacted]")
        await sweep_once(h.rt)
        assert (await h.rt.store.get_job(job_id)).status == Status.STORED  # type: ignore[union-attr]


def test_the_database_password_is_a_known_secret() -> None:
    from receiver.config.settings import Settings

    for db in ("postgresql://fluxhook:s3cret-db-pass@db:5432/fh", "postgresql://fluxhook@db/fh?password=s3cret-db-pass"):
        redactor = Redactor.from_settings(Settings.from_env({"FLUXHOOK_DB": db}))
        assert "s3cret-db-pass" not in (redactor.scrub("connection to db failed: s3cret-db-pass") or "")

"""Regression tests for the security review: malformed encodings, caps on what a callback may store,
id-less callbacks, secrets in stored and shown text, and the bound on a job's life."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.cli.main import main as cli_main
from receiver.engine.jobs import callback_url, submit
from receiver.engine.sweep import store_by, sweep_once
from receiver.obs.redaction import Redactor
from receiver.web.app import create_app
from submitter.bodies import BodyError, loads_object
from submitter.signing import derive_job_keys
from submitter.simulator import Faults, png_image
from submitter.status import TERMINAL, Status
from tests.harness import MASTER, PUBLIC, Harness, files_in, harness
from tests.test_app import a_job, post, ready_body
from tests.test_replicate import SECRET, FakeReplicate, deliver, fake_harness, new_prediction, with_key

pytestmark = pytest.mark.anyio


async def provider_id(h: Harness, job_id: str) -> str:
    job = await h.rt.store.get_job(job_id)
    assert job is not None and job.provider_job_id
    return job.provider_job_id


# -- 3. UTF-8 only -------------------------------------------------------------------------------

def _encodings(pid: str) -> dict[str, bytes]:
    escaped = '{"id": "PID", "status": "Pending", "x": "\\ud800"}'.replace("PID", pid)
    raw = '{"id": "PID", "status": "Pending", "x": "\ud800"}'.replace("PID", pid)
    clean = '{"id": "PID", "status": "Pending"}'.replace("PID", pid)
    return {
        "utf-16-escaped": escaped.encode("utf-16"),
        "utf-16le-escaped": escaped.encode("utf-16-le"),
        "utf-32-escaped": escaped.encode("utf-32"),
        "utf-16-raw-surrogate": raw.encode("utf-16-le", "surrogatepass"),
        "utf-32-raw-surrogate": raw.encode("utf-32-le", "surrogatepass"),
        "utf-8-encoded-surrogate": raw.encode("utf-8", "surrogatepass"),
        "utf-16-clean": clean.encode("utf-16"),
        "latin-1": clean.replace("Pending", "Pending\xe9").encode("latin-1"),
        "utf-8-bom": b"\xef\xbb\xbf" + clean.encode(),
    }


@pytest.mark.parametrize("name", list(_encodings("p")), ids=str)
async def test_a_callback_that_is_not_utf8_is_400_and_stores_nothing(tmp_path: Path, name: str) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = _encodings(await provider_id(h, job_id))[name]
        response = await post(h, "bfl", job_id, body)
        assert response.status_code == 400, response.text
        assert "error" in response.json()
        assert await h.rt.store.count_events(job_id) == 0
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUBMITTED


def test_loads_object_accepts_utf8_only() -> None:
    assert loads_object('{"x": "é ✓ 🦊"}'.encode()) == {"x": "é ✓ 🦊"}
    with pytest.raises(BodyError, match="UTF-8"):
        loads_object('{"x": 1}'.encode("utf-16"))
    with pytest.raises(BodyError):
        loads_object(b'{"x": "\\udc00"}')
    assert json.loads(b'{"x": "\\ud83e\\udd8a"}') == loads_object(b'{"x": "\\ud83e\\udd8a"}')  # a valid pair


# -- 4. one slow download never holds up another job's poll ---------------------------------------

class HeldCDN(httpx.AsyncBaseTransport):
    """The simulator's CDN, except that files of `held` tasks fail once (503), then hang
    until `release` is set: the hanging download is a retry, the sweep's own work."""

    def __init__(self, sim_app: Any) -> None:
        self.inner = httpx.ASGITransport(sim_app)
        self.held: set[str] = set()
        self.failed = asyncio.Event()
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if any(task in request.url.path for task in self.held):
            if not self.failed.is_set():
                self.failed.set()
                return httpx.Response(503)
            self.started.set()
            await self.release.wait()
        return await self.inner.handle_async_request(request)


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Wait for a condition the background tasks bring about (bounded; no fixed sleeps)."""
    async with asyncio.timeout(within):
        while not await predicate():
            await asyncio.sleep(0.005)


async def test_a_hanging_download_does_not_delay_a_lost_callback_job(tmp_path: Path) -> None:
    async with harness(tmp_path, sweep_interval=0.01) as h:
        cdn = HeldCDN(h.sim.app)
        h.rt.cdn = httpx.AsyncClient(transport=cdn)
        h.sim.add_rule("lost", Faults(drop=True, runtime=0.0))
        slow = await submit(h.rt, "bfl", "flux-dev", {"prompt": "slow file"})
        cdn.held.add(slow.provider_job_id or "")
        lost = await submit(h.rt, "bfl", "flux-dev", {"prompt": "lost callback"})
        await h.settle()  # the slow job's Ready arrives; the lost job's never does
        app = create_app(h.settings, runtime=h.rt, workers=True)  # what `serve` runs in the background
        try:
            async with app.router.lifespan_context(app):
                async def retry_due() -> bool:
                    job = await h.rt.store.get_job(slow.id)
                    return cdn.failed.is_set() and job is not None and job.lease_owner is None
                await until(retry_due)
                h.clock.advance(60)  # the retry is due: the sweep takes it, and it hangs
                async with asyncio.timeout(20):
                    await cdn.started.wait()
                h.clock.advance(h.settings.poll_after)  # the lost job is due for its poll now

                async def lost_stored() -> bool:
                    job = await h.rt.store.get_job(lost.id)
                    return job is not None and job.status == Status.STORED

                await until(lost_stored)
                slow_job = await h.rt.store.get_job(slow.id)
                assert slow_job is not None and slow_job.status == Status.SUCCEEDED  # still downloading
                cdn.release.set()

                async def slow_stored() -> bool:
                    job = await h.rt.store.get_job(slow.id)
                    return job is not None and job.status == Status.STORED

                await until(slow_stored)
        finally:
            cdn.release.set()
            await h.rt.cdn.aclose()


# -- 8. every job ends, by a bound the README states -------------------------------------------------

async def test_a_result_that_never_downloads_ends_expired_by_the_stated_bound(tmp_path: Path) -> None:
    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with harness(tmp_path, cdn_transport=httpx.MockTransport(flaky)) as h:
        job_id = await a_job(h)
        far = "http://sim.test/delivery/x/sample.png?se=2099-01-01T00%3A00%3A00Z"  # claims to live for decades
        assert (await post(h, "bfl", job_id, ready_body(await provider_id(h, job_id), far))).status_code == 200
        job = await h.rt.store.get_job(job_id)
        assert job is not None
        bound = store_by(h.rt, job)
        assert bound == job.deadline_at + h.settings.download_window
        for _ in range(10_000):
            await sweep_once(h.rt)
            job = await h.rt.store.get_job(job_id)
            assert job is not None
            if job.status in TERMINAL:
                break
            assert job.status == Status.SUCCEEDED and job.next_check_at is not None
            assert job.next_check_at <= bound  # never scheduled past the bound
            h.clock.now = max(h.clock.now, job.next_check_at)
        assert job.status == Status.EXPIRED and "not stored within" in (job.error or "")
        assert h.clock.now <= bound


# -- 5. secrets never reach storage or output -----------------------------------------------------

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
        rows = await h.rt.store.inner._read("SELECT * FROM jobs")  # type: ignore[attr-defined]
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
        (row,) = await h.rt.store.inner._read("SELECT body, headers FROM events")  # type: ignore[attr-defined]
        assert token not in row["body"].decode() and token not in row["headers"]
        assert json.loads(row["body"])["webhook"].endswith("/hooks/replicate/" + job_id + "/[redacted]")
        await sweep_once(h.rt)
        assert (await h.rt.store.get_job(job_id)).status == Status.STORED  # type: ignore[union-attr]


# -- 6. what a callback may store is capped, per event and per job ----------------------------------

async def test_huge_headers_are_not_stored_whole(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = json.dumps({"id": await provider_id(h, job_id), "status": "Pending"}).encode()
        many = {f"x-pad-{n}": "v" * 900 for n in range(40)}
        response = await post(h, "bfl", job_id, body, **{"x-huge": "h" * 200_000}, **many)
        assert response.status_code == 200, response.text
        (row,) = await h.rt.store.inner._read("SELECT headers FROM events")  # type: ignore[attr-defined]
        assert len(row["headers"]) < 10_000
        kept = json.loads(row["headers"])
        assert kept["x-huge"].startswith("h" * 1024) and "not kept" in kept["x-huge"]
        assert "more headers not kept" in kept["[truncated]"]


async def test_events_per_job_are_capped_and_finished_jobs_record_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path, max_events_per_job=3) as h:
        job_id = await a_job(h)
        pid = await provider_id(h, job_id)
        for n in range(6):
            body = json.dumps({"id": pid, "status": "Pending", "progress": n}).encode()
            response = await post(h, "bfl", job_id, body)
            assert response.status_code == 200
            assert response.json().get("recorded", True) == (n < 3)
        assert await h.rt.store.count_events(job_id) == 3
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.progress == 5  # still applied beyond the cap
        await h.rt.store.finish(job_id, Status.FAILED, now=h.clock.now, reason="test")
        late = await post(h, "bfl", job_id, json.dumps({"id": pid, "status": "Pending", "x": 1}).encode())
        assert late.status_code == 200 and late.json() == {"ok": True, "status": "failed", "recorded": False}
        assert await h.rt.store.count_events(job_id) == 3


# -- 7. result files per job are capped ---------------------------------------------------------------

async def test_a_callback_listing_more_results_than_the_cap_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path, max_outputs=4) as h:
        job_id = await a_job(h)
        pid = await provider_id(h, job_id)
        urls = [f"http://sim.test/d/{n}.png" for n in range(7000)]  # 182 KB: under the body cap
        body = json.dumps({"id": pid, "status": "Ready", "result": {"sample": urls}}).encode()
        response = await post(h, "bfl", job_id, body)
        assert response.status_code == 422
        assert "7000 result files" in response.json()["error"] and "FLUXHOOK_MAX_OUTPUTS" in response.json()["error"]
        assert await h.rt.store.files(job_id) == [] and await h.rt.store.count_events(job_id) == 0
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUBMITTED
        within = json.dumps({"id": pid, "status": "Ready", "result": {"sample": urls[:4]}}).encode()
        assert (await post(h, "bfl", job_id, within)).status_code == 200
        assert len(await h.rt.store.files(job_id)) == 4


async def test_a_poll_listing_more_results_than_the_cap_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    fake = FakeReplicate(outputs=20)
    async with fake_harness(tmp_path, fake, max_outputs=16) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        fake.finish(pid)
        h.clock.advance(h.settings.poll_after)
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.FAILED and "20 result files" in (job.error or "")
        assert await h.rt.store.files(job_id) == [] and not fake.downloads


# -- a callback must name its provider task ------------------------------------------------------------

@pytest.mark.parametrize("body", [{"status": "Ready", "result": {"sample": "http://sim.test/x.png"}},
                                  {"status": "Error"}, {"status": "Pending"}], ids=["ready", "error", "pending"])
async def test_a_callback_without_an_id_is_refused(tmp_path: Path, body: dict[str, Any]) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        response = await post(h, "bfl", job_id, json.dumps(body).encode())
        assert response.status_code == 400 and "no id" in response.json()["error"]
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUBMITTED and await h.rt.store.files(job_id) == []


# -- 4. a slow result server keeps the lease alive while bytes flow ------------------------------------

async def test_a_trickling_download_keeps_its_lease_and_nobody_else_takes_the_job(tmp_path: Path) -> None:
    taken: list[object] = []
    harness_box: dict[str, Harness] = {}

    async def trickle() -> AsyncIterator[bytes]:
        h = harness_box["h"]
        image = png_image("slow")
        step = 16
        for start in range(0, len(image), step):
            h.clock.advance(7.0)  # ~9 bytes/s: the whole file takes far longer than a lease
            taken.append(await h.rt.store.claim(job_id, "another-replica", now=h.clock.now, lease=60))
            yield image[start:start + step]

    def cdn(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=trickle())

    async with harness(tmp_path, cdn_transport=httpx.MockTransport(cdn), lease_seconds=30) as h:
        harness_box["h"] = h
        job_id = await a_job(h)
        ready = ready_body(await provider_id(h, job_id), "http://sim.test/delivery/x/sample.png")
        assert (await post(h, "bfl", job_id, ready)).status_code == 200
        started = h.clock.now
        await sweep_once(h.rt)
        assert h.clock.now - started > 4 * h.settings.lease_seconds  # the download outlived several leases
        assert len(taken) > 10 and taken == [None] * len(taken)  # ...and no one else could claim the job
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.STORED


async def test_a_download_whose_lease_was_taken_stops(tmp_path: Path) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        h = harness_box["h"]
        image = png_image("taken")
        yield image[:64]
        # Another process took the job over (our lease lapsed, say, during a long stall).
        await h.rt.store.inner._write("UPDATE jobs SET lease_owner = 'other', lease_until = ?",  # type: ignore[attr-defined]
                                (h.clock.now + 1e6,))
        h.clock.advance(h.settings.lease_seconds)
        yield image[64:]

    harness_box: dict[str, Harness] = {}

    def cdn(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=trickle())

    async with harness(tmp_path, cdn_transport=httpx.MockTransport(cdn)) as h:
        harness_box["h"] = h
        job_id = await a_job(h)
        ready = ready_body(await provider_id(h, job_id), "http://sim.test/delivery/x/sample.png")
        assert (await post(h, "bfl", job_id, ready)).status_code == 200
        report = await sweep_once(h.rt)
        assert report.actions["download-retry"] == 1
        assert files_in(h.settings.results) == []  # no temp file left, nothing stored twice
        (record,) = await h.rt.store.files(job_id)
        assert not record.stored


def test_the_database_password_is_a_known_secret() -> None:
    from receiver.config.settings import Settings

    for db in ("postgresql://fluxhook:s3cret-db-pass@db:5432/fh", "postgresql://fluxhook@db/fh?password=s3cret-db-pass"):
        redactor = Redactor.from_settings(Settings.from_env({"FLUXHOOK_DB": db}))
        assert "s3cret-db-pass" not in (redactor.scrub("connection to db failed: s3cret-db-pass") or "")

"""Replicate and the Replicate-compatible proxies: snapshots, Standard Webhooks, event orders."""

from __future__ import annotations

import base64
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.engine.jobs import callback_url, submit
from receiver.engine.sweep import sweep_once
from submitter.bodies import REPLICATE, BodyError
from submitter.dialects import DIALECTS
from submitter.signing import sign_standard
from submitter.simulator import png_image
from submitter.status import Status
from tests import ledger
from tests.harness import MASTER, PUBLIC, Harness, harness

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"replicate-account-secret-0123456").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"an-older-account-secret-98765432").decode()
CDN = "https://replicate.delivery/xezq"


# -- snapshots ------------------------------------------------------------------------------


def snapshot(status: str, output: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": "pred1", "model": "black-forest-labs/flux-1.1-pro", "version": "hidden", "input": {"prompt": "p"},
            "logs": extra.pop("logs", ""), "output": output, "data_removed": extra.pop("data_removed", False),
            "error": extra.pop("error", None), "status": status, "created_at": "2026-11-22T10:00:00.000Z",
            "completed_at": extra.pop("completed_at", None),
            "urls": {"get": "https://api.replicate.com/v1/predictions/pred1"}, "metrics": {}}


@pytest.mark.parametrize(("body", "status", "urls"), [
    (snapshot("starting"), Status.SUBMITTED, ()),
    (snapshot("processing", logs="Using seed: 1\n"), Status.RUNNING, ()),
    # Output while processing is progress, not a result.
    (snapshot("processing", output=[f"{CDN}/a.png"]), Status.RUNNING, (f"{CDN}/a.png",)),
    (snapshot("succeeded", output=f"{CDN}/a.webp"), Status.SUCCEEDED, (f"{CDN}/a.webp",)),
    (snapshot("succeeded", output=[f"{CDN}/0.png", f"{CDN}/1.png"]), Status.SUCCEEDED, (f"{CDN}/0.png", f"{CDN}/1.png")),
    (snapshot("failed", error="NSFW content detected"), Status.FAILED, ()),
    (snapshot("canceled"), Status.CANCELED, ()),
    (snapshot("aborted"), Status.CANCELED, ()),
    (snapshot("succeeded", output=None, data_removed=True), Status.EXPIRED, ()),
    (snapshot("succeeded", output=None), Status.FAILED, ()),
    (snapshot("something-new"), None, ()),
])
def test_snapshots(body: dict[str, Any], status: Status | None, urls: tuple[str, ...]) -> None:
    observation = REPLICATE.observe(body)
    assert observation.provider_job_id == "pred1"
    assert observation.status == status and observation.urls == urls


def test_snapshot_details() -> None:
    aborted = REPLICATE.observe(snapshot("aborted"))
    assert aborted.reason and "aborted" in aborted.reason
    failed = REPLICATE.observe(snapshot("failed", error="NSFW content detected"))
    assert failed.reason == "NSFW content detected"
    done = REPLICATE.observe(snapshot("succeeded", output="x", completed_at="2026-11-22T10:00:05Z", logs="a" * 5000))
    assert done.completed_at == pytest.approx(1795341605.0) and done.logs is not None and len(done.logs) == 2000
    with pytest.raises(BodyError):
        REPLICATE.observe({"id": "x"})
    assert REPLICATE.submit_answer({"id": "p", "urls": {"get": "https://api.replicate.com/v1/predictions/p"}}).polling_url is None


def test_paths() -> None:
    native, deer = DIALECTS["replicate"], DIALECTS["deerapi-replicate"]
    model = "black-forest-labs/flux-1.1-pro"
    assert native.submit_url("https://api.replicate.com", model) == \
        "https://api.replicate.com/v1/models/black-forest-labs/flux-1.1-pro/predictions"
    assert deer.submit_url("https://api.deerapi.com", model) == \
        "https://api.deerapi.com/replicate/v1/models/black-forest-labs/flux-1.1-pro/predictions"
    assert deer.poll_url("https://api.deerapi.com", "p1") == "https://api.deerapi.com/replicate/v1/predictions/p1"
    assert native.cancel_url("https://api.replicate.com", "p1") == "https://api.replicate.com/v1/predictions/p1/cancel"
    for bad in ("flux-1.1-pro", "a/b/c", "../x/y", "a/..", "a b/c", "owner/"):
        with pytest.raises(ValueError):
            native.check_model(bad)
    with pytest.raises(ValueError):
        DIALECTS["bfl"].check_model("black-forest-labs/flux-dev")
    body = native.submit_body({"prompt": "p"}, "https://h/x", "unused", ["completed"])
    assert body == {"input": {"prompt": "p"}, "webhook": "https://h/x", "webhook_events_filter": ["completed"]}
    assert native.submit_body({}, "https://h", "s")["webhook_events_filter"] == ["start", "completed"]


# -- a fake Replicate API and CDN -------------------------------------------------------------------


class FakeReplicate:
    """Replicate's API as a MockTransport: predictions whose snapshots the test controls."""

    def __init__(self, outputs: int = 1) -> None:
        self.outputs = outputs
        self.secret = SECRET
        self.requests: Counter[str] = Counter()
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.submitted: list[dict[str, Any]] = []
        self.downloads: Counter[str] = Counter()

    def urls(self, pid: str) -> list[str]:
        return [f"{CDN}/{pid}/out-{n}.png" for n in range(self.outputs)]

    def api(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.headers.get("authorization") != "Bearer r8_test":
            return httpx.Response(401, json={"detail": "Unauthenticated"})
        if path.endswith("/webhooks/default/secret"):
            self.requests["secret"] += 1
            return httpx.Response(200, json={"key": self.secret})
        if request.method == "POST" and path.endswith("/predictions"):
            self.requests["create"] += 1
            pid = f"pred{len(self.snapshots) + 1}"
            self.submitted.append(json.loads(request.content))
            self.snapshots[pid] = {**snapshot("starting"), "id": pid}
            return httpx.Response(201, json=self.snapshots[pid])
        pid = path.rsplit("/", 1)[1]
        self.requests["poll"] += 1
        if pid not in self.snapshots:
            return httpx.Response(404, json={"detail": "Not found."})
        return httpx.Response(200, json=self.snapshots[pid])

    def cdn(self, request: httpx.Request) -> httpx.Response:
        self.downloads[str(request.url)] += 1
        return httpx.Response(200, content=png_image(str(request.url)), headers={"content-type": "image/png"})

    def finish(self, pid: str) -> dict[str, Any]:
        output: Any = self.urls(pid) if self.outputs > 1 else self.urls(pid)[0]
        self.snapshots[pid] = {**snapshot("succeeded", output=output), "id": pid}
        return self.snapshots[pid]


def fake_harness(tmp_path: Path, fake: FakeReplicate, **overrides: Any) -> Any:
    overrides.setdefault("replicate_webhook_secrets", ())
    overrides.setdefault("download_hosts", ("replicate.delivery", "*.replicate.delivery"))
    h = harness(tmp_path, api_transport=httpx.MockTransport(fake.api), cdn_transport=httpx.MockTransport(fake.cdn),
                **overrides)
    return h


def with_key(h: Harness, provider: str = "replicate") -> None:
    from submitter.client import Provider

    providers = dict(h.rt.settings.providers)
    providers[provider] = Provider(providers[provider].dialect, "https://api.replicate.test", "r8_test")
    h.rt.settings = h.rt.settings.with_overrides(providers=providers)


async def deliver(h: Harness, provider: str, job_id: str, body: dict[str, Any], *, msg_id: str, secret: str | None,
                  at: float | None = None) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if secret is not None:
        ts = int(h.clock.now if at is None else at)
        headers |= {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                    "webhook-signature": sign_standard(secret, msg_id, ts, raw)}
    url, _ = callback_url(PUBLIC, MASTER, provider, job_id)
    return await h.client.post(url.removeprefix(PUBLIC), content=raw, headers=headers)


async def new_prediction(h: Harness, provider: str = "replicate", **kw: Any) -> tuple[str, str]:
    job = await submit(h.rt, provider, "black-forest-labs/flux-1.1-pro", {"prompt": "p"}, **kw)
    assert job.status == Status.SUBMITTED and job.provider_job_id
    return job.id, job.provider_job_id


# -- callbacks -------------------------------------------------------------------------------------


EVENTS = ["start", "output", "logs", "completed"]


@pytest.mark.parametrize("order", list(itertools.permutations(EVENTS)), ids="-".join)
async def test_every_event_order_ends_stored_with_one_download_per_file(tmp_path: Path, order: tuple[str, ...]) -> None:
    fake = FakeReplicate(outputs=2)
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h, events=EVENTS)
        urls = fake.urls(pid)
        bodies = {
            "start": {**snapshot("starting"), "id": pid},
            "output": {**snapshot("processing", output=urls[:1], logs="step 1/4"), "id": pid},
            "logs": {**snapshot("processing", output=urls[:1], logs="step 1/4\nstep 2/4"), "id": pid},
            "completed": fake.finish(pid),
        }
        for event in order:
            response = await deliver(h, "replicate", job_id, bodies[event], msg_id=f"msg_{event}", secret=SECRET)
            assert response.status_code == 200, response.text
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUCCEEDED
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.STORED and job.polls == 0
        assert job.outputs == tuple(urls)
        files = await h.rt.store.files(job_id)
        assert [f.path for f in files] == [f"{job_id}/0.png", f"{job_id}/1.png"]
        assert all(fake.downloads[u] == 1 for u in urls) and len(fake.downloads) == 2
        assert fake.requests["poll"] == 0
        assert fake.submitted[0]["webhook_events_filter"] == EVENTS


async def test_progress_is_recorded_without_downloading(tmp_path: Path) -> None:
    fake = FakeReplicate(outputs=2)
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        body = {**snapshot("processing", output=fake.urls(pid)[:1], logs="Using seed: 7\n"), "id": pid}
        assert (await deliver(h, "replicate", job_id, body, msg_id="m1", secret=SECRET)).status_code == 200
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.RUNNING and job.logs == "Using seed: 7\n"
        assert job.outputs == tuple(fake.urls(pid)[:1]) and not fake.downloads
        assert await h.rt.store.files(job_id) == []


async def test_a_repeated_webhook_id_changes_nothing(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        first = await deliver(h, "replicate", job_id, fake.finish(pid), msg_id="msg_1", secret=SECRET)
        # A retry of the same message: same id, fresh timestamp, even a different body.
        h.clock.advance(20)
        again = await deliver(h, "replicate", job_id, {**snapshot("processing"), "id": pid}, msg_id="msg_1", secret=SECRET)
        assert first.json()["status"] == "succeeded" and again.json() == {"ok": True, "duplicate": True}
        assert await ledger.count_events(h.rt.store, job_id) == 1


@pytest.mark.parametrize("skew", [-301, 301, -3600, 10**6])
async def test_stale_and_future_timestamps_are_401(tmp_path: Path, skew: int) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake, replicate_webhook_secrets=(SECRET,)) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        response = await deliver(h, "replicate", job_id, fake.finish(pid), msg_id="m", secret=SECRET,
                                 at=h.clock.now + skew)
        assert response.status_code == 401 and "tolerance" in response.json()["error"]
        ok = await deliver(h, "replicate", job_id, fake.finish(pid), msg_id="m", secret=SECRET, at=h.clock.now + 299)
        assert ok.status_code == 200


async def test_rotated_secrets_are_all_accepted(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake, replicate_webhook_secrets=(SECRET, OLD_SECRET)) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        start = {**snapshot("starting"), "id": pid}
        assert (await deliver(h, "replicate", job_id, start, msg_id="a", secret=OLD_SECRET)).status_code == 200
        assert (await deliver(h, "replicate", job_id, fake.finish(pid), msg_id="b", secret=SECRET)).status_code == 200
        wrong = "whsec_" + base64.b64encode(b"x" * 32).decode()
        assert (await deliver(h, "replicate", job_id, start, msg_id="c", secret=wrong)).status_code == 401
        assert fake.requests["secret"] == 0  # configured secrets are never fetched


async def test_fetched_secret_is_cached_and_refetched_after_a_rotation(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        start = {**snapshot("starting"), "id": pid}
        assert (await deliver(h, "replicate", job_id, start, msg_id="a", secret=SECRET)).status_code == 200
        assert (await deliver(h, "replicate", job_id, start, msg_id="b", secret=SECRET)).status_code == 200
        assert fake.requests["secret"] == 1
        # The account rotates its secret: the first failure refetches once and succeeds.
        fake.secret = OLD_SECRET
        h.clock.advance(61)
        assert (await deliver(h, "replicate", job_id, start, msg_id="c", secret=OLD_SECRET)).status_code == 200
        assert fake.requests["secret"] == 2
        # Forgeries right after cannot make us refetch again.
        forged = "whsec_" + base64.b64encode(b"f" * 32).decode()
        for i in range(5):
            response = await deliver(h, "replicate", job_id, start, msg_id=f"f{i}", secret=forged)
            assert response.status_code == 401
        assert fake.requests["secret"] == 2


async def test_secret_fetch_failure_is_503_so_replicate_retries(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        fake.secret = "not-a-secret"
        response = await deliver(h, "replicate", job_id, fake.finish(pid), msg_id="m", secret=SECRET)
        assert response.status_code == 503
        assert (await h.rt.store.get_job(job_id)).status == Status.SUBMITTED  # type: ignore[union-attr]


async def test_native_replicate_requires_a_signature(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake, replicate_webhook_secrets=(SECRET,)) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        response = await deliver(h, "replicate", job_id, fake.finish(pid), msg_id="m", secret=None)
        assert response.status_code == 401


@pytest.mark.parametrize("provider", ["deerapi-replicate", "cometapi-replicate"])
async def test_proxy_callbacks_are_authenticated_by_the_path_token(tmp_path: Path, provider: str) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake, replicate_webhook_secrets=(SECRET,)) as h:
        with_key(h, provider)
        job_id, pid = await new_prediction(h, provider)
        # Unsigned, and signed with the proxy's own account secret that we cannot know: both accepted.
        start = {**snapshot("starting"), "id": pid}
        proxy_secret = "whsec_" + base64.b64encode(b"p" * 32).decode()
        assert (await deliver(h, provider, job_id, start, msg_id="m0", secret=None)).status_code == 200
        assert (await deliver(h, provider, job_id, fake.finish(pid), msg_id="m1", secret=proxy_secret)).status_code == 200
        verdicts = [r["verdict"] for r in await ledger.rows(h.rt.store, "SELECT verdict FROM events ORDER BY id")]
        assert verdicts == ["accepted:token", "accepted:token (signature not verifiable)"]
        # The token is still required.
        url, _ = callback_url(PUBLIC, MASTER, provider, job_id)
        forged = url.rsplit("/", 1)[0] + "/" + "A" * 43
        assert (await h.client.post(forged.removeprefix(PUBLIC), content=b"{}")).status_code == 401
        await sweep_once(h.rt)
        assert (await h.rt.store.get_job(job_id)).status == Status.STORED  # type: ignore[union-attr]
        # Polls and submits went through the proxy's own paths.
        assert fake.submitted and fake.requests["poll"] == 0


@pytest.mark.parametrize("headers", [
    {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "garbage"},
    {"webhook-id": "m", "webhook-timestamp": "1.5", "webhook-signature": "v1,AAAA"},
    {"webhook-id": "m", "webhook-timestamp": "abc", "webhook-signature": "v1,AAAA"},
    {"webhook-id": "m", "webhook-timestamp": "9" * 30, "webhook-signature": "v1,!!!"},
    {"webhook-signature": "v1,AAAA"},
    {"webhook-id": "m", "webhook-timestamp": "1800000000", "webhook-signature": "v1"},
])
async def test_malformed_signature_headers_are_401(tmp_path: Path, headers: dict[str, str]) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake, replicate_webhook_secrets=(SECRET,)) as h:
        with_key(h)
        job_id, _pid = await new_prediction(h)
        url, _ = callback_url(PUBLIC, MASTER, "replicate", job_id)
        response = await h.client.post(url.removeprefix(PUBLIC), content=b"\xff{not json", headers=headers)
        assert response.status_code == 401


# -- the sweep rescues what webhooks miss -------------------------------------------------------------


async def test_completed_dropped_is_rescued_by_one_poll(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        start = {**snapshot("starting"), "id": pid}
        assert (await deliver(h, "replicate", job_id, start, msg_id="a", secret=SECRET)).status_code == 200
        fake.finish(pid)  # ...and its completed webhook never arrives
        h.clock.advance(h.settings.poll_after)
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.STORED and job.polls == 1
        assert fake.requests["poll"] == 1


async def test_data_removed_before_download_ends_expired(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        fake.snapshots[pid] = {**snapshot("succeeded", output=None, data_removed=True), "id": pid}
        h.clock.advance(h.settings.poll_after)
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.EXPIRED and "removed" in (job.error or "")


async def test_events_option_is_validated(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        for events, message in ((["start"], "completed"), (["done"], "among"), ([], "among")):
            with pytest.raises(ValueError, match=message):
                await submit(h.rt, "replicate", "black-forest-labs/flux-1.1-pro", {"prompt": "p"}, events=events)
        with pytest.raises(ValueError, match="Replicate"):
            await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"}, events=["completed"])
        with pytest.raises(ValueError, match="owner/name"):
            await submit(h.rt, "replicate", "flux-1.1-pro", {"prompt": "p"})
        assert await h.rt.store.list_jobs() == []


async def test_a_stale_poll_answer_is_polled_again_later_not_in_the_same_pass(tmp_path: Path) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        running = {**snapshot("processing"), "id": pid}
        assert (await deliver(h, "replicate", job_id, running, msg_id="m1", secret=SECRET)).status_code == 200
        fake.snapshots[pid] = {**snapshot("starting"), "id": pid}  # the API lags behind the webhook
        h.clock.advance(h.settings.poll_after)
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert fake.requests["poll"] == 1
        assert job is not None and job.status == Status.RUNNING and job.next_check_at > h.clock.now  # type: ignore[operator]

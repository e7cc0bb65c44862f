"""The relay in-process: outbox events to webhook endpoints (httpx mock transports), retries,
dead deliveries, 410, per-job order, two relays on one store. A manual clock, no sleeps."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver.engine.jobs import new_job, submit
from receiver.engine.relay import Relay, next_delay
from receiver.engine.runtime import Runtime
from receiver.engine.sweep import sweep_once
from receiver.sinks import sinks_from_settings
from receiver.store import Store
from submitter.status import Status
from tests.harness import Harness, harness

pytestmark = pytest.mark.anyio
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
HOOK = "https://pipeline.test/in?token=hush-hush"


class Endpoint:
    """A webhook endpoint answering from a script of status codes (then 200), recording what came."""

    def __init__(self, script: tuple[int, ...] = (), headers: dict[str, str] | None = None) -> None:
        self.script = list(script)
        self.headers = headers or {}
        self.received: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request)
        code = self.script.pop(0) if self.script else 200
        return httpx.Response(code, headers=self.headers if code != 200 else {})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.received]


def wire(h: Harness, endpoints: dict[str, Callable[[httpx.Request], httpx.Response]], rt: Runtime | None = None) -> Relay:
    """Point the runtime's relay at mock endpoints (one per forward URL)."""
    rt = rt or h.rt

    def route(request: httpx.Request) -> httpx.Response:
        return endpoints[str(request.url)](request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    rt.relay = rt.relay_to(sinks_from_settings(rt.settings, http=http))
    return rt.relay


def forwarding(tmp_path: Path, *urls: str, events: frozenset[str] | None = None, **kw: Any) -> Any:
    from tests.harness import make_settings

    base = make_settings(tmp_path).integrations
    integrations = dataclasses.replace(base, forward_urls=urls or (HOOK,), forward_secret=SECRET,
                                       **({"forward_events": events} if events else {}))
    return harness(tmp_path, integrations=integrations, **kw)


async def stored_job(h: Harness) -> str:
    await h.rt.relay.register()  # as `serve` does at start: owed every event from now on
    job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
    await h.settle()
    await sweep_once(h.rt)
    found = await h.rt.store.get_job(job.id)
    assert found is not None and found.status == Status.STORED
    return job.id


async def test_a_stored_job_reaches_the_webhook_signed(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        endpoint = Endpoint()
        wire(h, {HOOK: endpoint})
        job_id = await stored_job(h)  # the sweep's relay pass delivers
        [request] = endpoint.received
        payload = Webhook(SECRET).verify(request.content, dict(request.headers))
        assert payload["type"] == "job.stored" and payload["data"]["id"] == job_id
        assert request.headers["webhook-id"] == payload["id"] and payload["id"].startswith("evt_")
        [file] = payload["data"]["files"]
        assert file["url"] == f"/v1/jobs/{job_id}/files/0" and file["location"].endswith(f"{job_id}/0.png")
        [delivery] = await h.rt.store.deliveries("delivered")
        assert delivery.attempts == 1 and delivery.last_code == 200
        assert (await h.rt.relay.run_once()).outcomes == {}  # nothing owed twice


async def test_five_503s_then_200_deliver_the_same_webhook_id(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        endpoint = Endpoint((503,) * 5)
        wire(h, {HOOK: endpoint})
        await stored_job(h)
        for _ in range(5):
            [pending] = await h.rt.store.deliveries("pending")
            assert pending.next_at is not None and pending.next_at > h.clock.now  # backing off
            h.clock.now = pending.next_at
            await h.rt.relay.run_once()
        assert len(endpoint.received) == 6 and len({r.headers["webhook-id"] for r in endpoint.received}) == 1
        [delivered] = await h.rt.store.deliveries("delivered")
        attempts = await h.rt.store.delivery_attempts(delivered.id)
        assert [a["code"] for a in attempts] == [503] * 5 + [200]
        assert all(a["latency_ms"] >= 0 for a in attempts) and not any("hush" in str(a) for a in attempts)


async def test_retry_after_is_honoured_and_the_delivery_dies_after_the_retry_window(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        endpoint = Endpoint((429,) * 1000, headers={"retry-after": "7200"})
        wire(h, {HOOK: endpoint})
        await stored_job(h)
        [pending] = await h.rt.store.deliveries("pending")
        assert pending.next_at is not None and pending.next_at >= h.clock.now + 3600  # capped at the backoff cap
        for _ in range(40):
            [pending] = await h.rt.store.deliveries() or [None]
            if pending is None or pending.state != "pending":
                break
            h.clock.now = pending.next_at
            await h.rt.relay.run_once()
        [dead] = await h.rt.store.deliveries("dead")
        assert dead.last_code == 429 and dead.next_at is None
        assert h.clock.now - dead.created_at <= h.settings.integrations.forward_retry_for


async def test_a_4xx_is_dead_at_once_and_redelivered_on_request(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        endpoint = Endpoint((400,))
        wire(h, {HOOK: endpoint})
        await stored_job(h)
        [dead] = await h.rt.store.deliveries("dead")
        assert dead.attempts == 1
        assert await h.rt.store.redeliver(None, failed=True, sinks_for=h.rt.relay.sinks_for(), now=h.clock.now) == 1
        await h.rt.relay.run_once()
        assert len(endpoint.received) == 2 and (await h.rt.store.deliveries("delivered"))


async def test_410_disables_the_endpoint_until_it_is_enabled(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        endpoint = Endpoint((410,))
        relay = wire(h, {HOOK: endpoint})
        await stored_job(h)
        [sink] = await h.rt.store.sinks()
        assert sink.disabled_at is not None and "hush" not in sink.display
        h.clock.advance(86400 * 3)
        await relay.run_once()
        assert len(endpoint.received) == 1  # disabled: nothing sent, nothing dead
        assert [d.state for d in await h.rt.store.deliveries()] == ["pending"]
        assert await h.rt.store.enable_sink(sink.name, now=h.clock.now)
        await relay.run_once()
        assert len(endpoint.received) == 2 and await h.rt.store.deliveries("delivered")


async def test_one_job_s_events_go_in_order_and_a_down_endpoint_holds_back_only_its_own(tmp_path: Path) -> None:
    other = "https://other.test/hook"
    every = frozenset({"job.submitted", "job.running", "job.stored", "job.failed", "job.canceled"})
    async with forwarding(tmp_path, HOOK, other, events=every) as h:
        down = Endpoint((503,) * 3)
        up = Endpoint()
        wire(h, {HOOK: down, other: up})
        await h.rt.relay.register()
        job = await new_job(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.rt.store.record_submit(job.id, "task-1", None, now=h.clock.now, next_check_at=None)
        await h.rt.store.finish(job.id, Status.FAILED, now=h.clock.now, reason="provider error")
        await h.rt.relay.run_once()
        assert [b["type"] for b in up.bodies()] == ["job.submitted", "job.failed"]
        assert [b["type"] for b in down.bodies()] == ["job.submitted"]  # failed waits behind it
        for _ in range(4):
            pending = [d for d in await h.rt.store.deliveries("pending") if d.attempts]  # the one retrying
            if not pending:
                break
            h.clock.now = min(d.next_at for d in pending)  # type: ignore[type-var]
            await h.rt.relay.run_once()
        assert [b["type"] for b in down.bodies()] == ["job.submitted"] * 4 + ["job.failed"]
        assert len(up.received) == 2


async def test_two_relays_on_one_store_deliver_each_event_once(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        endpoint = Endpoint()
        wire(h, {HOOK: endpoint})
        await h.rt.relay.register()
        ids = [(await new_job(h.rt, "bfl", "flux-dev", {"prompt": f"p{n}"})).id for n in range(12)]
        for job_id in ids:
            await h.rt.store.finish(job_id, Status.CANCELED, now=h.clock.now)
        twin = Runtime(settings=h.settings, store=h.rt.store, api=h.rt.api, cdn=h.rt.cdn, clock=h.clock)
        wire(h, {HOOK: endpoint}, rt=twin)
        await asyncio.gather(h.rt.relay.run_once(), twin.relay.run_once())
        got = [b["data"]["id"] for b in endpoint.bodies()]
        assert sorted(got) == sorted(ids)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    import random

    rand = random.Random(1)
    delays = [next_delay(n, None, rand) for n in range(1, 12)]
    assert 2.5 <= delays[0] <= 5 and delays[-1] <= 3600 and delays[6] > delays[0]
    assert next_delay(1, 120.0, rand) >= 120.0 and next_delay(1, 10**9, rand) <= 3600


async def test_a_store_without_sinks_relays_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await stored_job(h)
        store: Store = h.rt.store
        assert await store.sinks() == [] and await store.deliveries() == []


class _FakeSink:
    """A sink in memory: `hang` makes every delivery wait until released."""

    def __init__(self, name: str, hang: bool = False) -> None:
        self.kind, self.name, self.display = "redis", name, name
        self.types = frozenset({"job.canceled"})
        self.hang = hang
        self.release = asyncio.Event()
        self.got: list[str] = []

    async def start(self) -> None:
        pass

    async def deliver(self, event: Any) -> Any:
        from receiver.sinks import Attempt

        if self.hang:
            await self.release.wait()
        self.got.append(event.id)
        return Attempt(ok=True)

    async def close(self) -> None:
        pass


async def test_a_hung_sink_holds_back_no_other_sink(tmp_path: Path) -> None:
    from receiver.engine.relay import relay_loop

    async with harness(tmp_path) as h:
        hung, fine = _FakeSink("hung", hang=True), _FakeSink("fine")
        h.rt.relay = h.rt.relay_to([hung, fine])  # type: ignore[list-item]
        await h.rt.relay.register()  # as serve does before it takes requests
        loop = asyncio.create_task(relay_loop(h.rt.relay, 3600, feed=h.rt.feed, stopping=h.rt.stopping, idle=h.rt.idle))
        try:
            for n in range(3):
                job = await new_job(h.rt, "bfl", "flux-dev", {"prompt": f"p{n}"})
                await h.rt.store.finish(job.id, Status.CANCELED, now=h.clock.now)
                for _ in range(10_000):  # bounded in steps: the feed wakes the fine sink's loop
                    if len(fine.got) == n + 1:
                        break
                    await asyncio.sleep(0.001)
                assert len(fine.got) == n + 1 and hung.got == []
        finally:
            hung.release.set()
            h.rt.stopping.set()
            await loop
        assert len(hung.got) >= 1  # the hung sink's claim went out once released

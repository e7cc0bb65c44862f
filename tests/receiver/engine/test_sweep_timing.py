"""How soon a job whose callback never came is stored: its first poll falls due FLUXHOOK_POLL_AFTER
after the submit answer, the sweep's passes start one interval apart (so a due job waits at most
one interval for its poll, however long the last pass took), and a poll that finds the result makes
the download due at once and wakes the download loop, so the file never waits for a later pass
(the lost-callback bound: POLL_AFTER + one sweep interval + a little); and polls run beside downloads, so
a hanging download never delays a lost-callback job's poll. A manual clock; nothing sleeps but the last
test's bounded waits for `serve`'s background loops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.engine import sweep
from receiver.engine.jobs import submit
from receiver.engine.sweep import SweepReport, check_pass, download_loop, download_pass, handle, sweep_loop
from receiver.web.app import create_app
from submitter.simulator import Faults
from submitter.status import Status
from tests.harness import Harness, harness

pytestmark = pytest.mark.anyio


async def dropped_job(h: Harness) -> str:
    """A submitted job whose result callback is dropped (the provider finishes it at once)."""
    job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "lost callback"})
    await h.settle()
    current = await h.rt.store.get_job(job.id)
    assert current is not None and current.status == Status.SUBMITTED and current.callback_at is None
    return job.id


async def test_first_poll_is_due_poll_after_the_submit_answer(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, drop=True), poll_after=30.0) as h:
        job_id = await dropped_job(h)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.submitted_at is not None
        assert job.next_check_at == job.submitted_at + 30.0
        h.clock.advance(30.0 - 0.001)
        early = SweepReport()
        await check_pass(h.rt, early)
        assert early.claimed == 0 and h.sim.stats()["tasks"][job.provider_job_id]["polls"] == 0
        h.clock.advance(0.001)
        due = SweepReport()
        await check_pass(h.rt, due)
        assert due.actions["polled"] == 1 and h.sim.stats()["tasks"][job.provider_job_id]["polls"] == 1


async def test_a_poll_finding_success_kicks_the_download_at_once(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, drop=True), poll_after=30.0) as h:
        job_id = await dropped_job(h)
        h.clock.advance(30.0)
        (claimed,) = await h.rt.store.claim_due(h.rt.owner, now=h.clock(), lease=h.settings.lease_seconds,
                                                limit=10, downloads=False)
        h.rt.downloads_due.clear()
        assert await handle(h.rt, claimed) == "polled"
        assert h.rt.downloads_due.is_set()  # the download loop is woken by the poll itself
        polled = await h.rt.store.get_job(job_id)
        assert polled is not None and polled.status == Status.SUCCEEDED and polled.lease_owner is None
        # Due now, not at the next poll's time: a download pass at this very instant takes it.
        assert polled.next_check_at is not None and polled.next_check_at <= h.clock()
        report = SweepReport()
        await download_pass(h.rt, report)
        assert report.actions["stored"] == 1
        stored = await h.rt.store.get_job(job_id)
        assert stored is not None and stored.status == Status.STORED
        assert h.sim.stats()["tasks"][polled.provider_job_id]["polls"] == 1  # one poll, no re-poll


async def test_the_download_loop_stores_a_polled_result_without_waiting_its_interval(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, drop=True), poll_after=30.0) as h:
        job_id = await dropped_job(h)
        rt = h.rt
        idles: asyncio.Queue[float] = asyncio.Queue()
        idle = rt.idle

        async def counted_idle(wake: Awaitable[Any], within: float) -> None:
            await idles.put(within)
            await idle(wake, within)

        rt.idle = counted_idle  # type: ignore[method-assign]
        # An interval no test run outlasts: only a kick can make the loop look again.
        loop = asyncio.create_task(download_loop(rt, 24 * 3600.0))
        try:
            async with asyncio.timeout(60):  # a hang guard only: the kick is what must wake the loop
                assert await idles.get() == 24 * 3600.0  # first pass done (nothing due), now waiting
                h.clock.advance(30.0)
                report = SweepReport()
                await check_pass(rt, report)
                assert report.actions["polled"] == 1
                await idles.get()  # woken, one more pass, waiting again
            stored = await rt.store.get_job(job_id)
            assert stored is not None and stored.status == Status.STORED
        finally:
            rt.stopping.set()
            await loop


async def test_sweep_passes_start_one_interval_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with harness(tmp_path) as h:
        took = iter([0.3, 1.5, 0.0, 1.0])

        async def pass_taking(rt: Any, report: SweepReport, **_: Any) -> None:
            h.clock.advance(next(took))  # the pass's polls took this long

        waits: list[float] = []

        async def idle(wake: Awaitable[Any], within: float) -> None:
            waits.append(within)
            if asyncio.iscoroutine(wake):
                wake.close()
            if len(waits) == 4:
                h.rt.stopping.set()

        monkeypatch.setattr(sweep, "check_pass", pass_taking)
        h.rt.idle = idle  # type: ignore[method-assign]
        async with asyncio.timeout(60):  # a hang guard only
            await sweep_loop(h.rt, 1.0)
        # The next pass is due one interval after this one started: what is left of it, a twentieth
        # of the interval after a pass that took it all (never back to back), a whole interval after
        # an instant one.
        assert waits == [pytest.approx(0.7), 0.05, 1.0, 0.05]


# -- one slow download never holds up another job's poll ---------------------------------------------

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

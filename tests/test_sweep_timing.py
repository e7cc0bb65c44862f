"""How soon a job whose callback never came is stored: its first poll falls due FLUXHOOK_POLL_AFTER
after the submit answer, the sweep's passes start one interval apart (so a due job waits at most
one interval for its poll, however long the last pass took), and a poll that finds the result makes
the download due at once and wakes the download loop, so the file never waits for a later pass
(the lost-callback bound: POLL_AFTER + one sweep interval + a little). A manual clock; nothing sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from receiver.engine import sweep
from receiver.engine.jobs import submit
from receiver.engine.sweep import SweepReport, check_pass, download_loop, download_pass, handle, sweep_loop
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

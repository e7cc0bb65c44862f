"""receiver/engine/leases.py: `claimed` hands a job's lease back on every way out of its block (a return, an
exception, a cancellation), each as told, and `Lease` renews it. On SQLite, a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from receiver.engine.jobs import new_job
from receiver.engine.leases import HAND_BACK, Lease, LeaseLost, Release, claimed
from receiver.store import Job, StoreUnavailable
from submitter.status import Status
from tests import ledger
from tests.harness import Harness, harness

pytestmark = pytest.mark.anyio


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as made:
        yield made


async def leased_job(h: Harness) -> Job:
    """A queued job born leased by this runtime (as a submit holds it)."""
    job = await new_job(h.rt, "bfl", "flux-dev", {"prompt": "p"})
    assert job.lease_owner == h.rt.owner
    return job


async def current(h: Harness, job_id: str) -> Job:
    job = await h.rt.store.get_job(job_id)
    assert job is not None
    return job


def hold(
    h: Harness, job: Job, *, on_error: Callable[[Exception], Release | None] | None = None,
    on_cancel: Release | None = HAND_BACK,
) -> AbstractAsyncContextManager[Lease]:
    return claimed(h.rt.store, job, h.rt.owner, seconds=h.settings.lease_seconds, clock=h.clock,
                   on_error=on_error, on_cancel=on_cancel)


async def test_released_on_success_as_the_block_said_then_its_callbacks_run(h: Harness) -> None:
    job = await leased_job(h)
    called: list[bool] = []
    async with hold(h, job) as lease:
        assert isinstance(lease, Lease) and lease.job is job
        lease.release_as(Status.QUEUED, h.clock.now + 42.0)
        lease.then(lambda: called.append(True))
        assert called == []
    after = await current(h, job.id)
    assert after.lease_owner is None and after.next_check_at == h.clock.now + 42.0
    assert called == [True]


async def test_released_on_success_by_default_keeping_the_schedule(h: Harness) -> None:
    job = await leased_job(h)
    async with hold(h, job):
        pass
    after = await current(h, job.id)
    assert after.lease_owner is None and after.next_check_at == job.next_check_at


async def test_released_on_an_exception_as_on_error_says_and_the_exception_propagates(h: Harness) -> None:
    job = await leased_job(h)
    seen: list[Exception] = []

    def on_error(exc: Exception) -> Release:
        seen.append(exc)
        return Release(Status.QUEUED, h.clock.now + 7.0)

    called: list[bool] = []
    with pytest.raises(RuntimeError, match="a bug"):
        async with hold(h, job, on_error=on_error) as lease:
            lease.release_as(Status.QUEUED, h.clock.now + 1000.0)  # what success would have done
            lease.then(lambda: called.append(True))
            raise RuntimeError("a bug")
    after = await current(h, job.id)
    assert after.lease_owner is None and after.next_check_at == h.clock.now + 7.0
    assert [str(e) for e in seen] == ["a bug"] and called == []  # `then` is for a normal end only


async def test_an_exception_without_on_error_keeps_the_lease(h: Harness) -> None:
    job = await leased_job(h)
    with pytest.raises(RuntimeError):
        async with hold(h, job):
            raise RuntimeError("interrupted")
    assert (await current(h, job.id)).lease_owner == h.rt.owner  # lapses by itself


async def test_a_failing_release_is_retried_as_on_error_says(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    job = await leased_job(h)
    release = h.rt.store.release
    calls: list[float | None] = []

    async def flaky(job_id: str, owner: str, **kw: object) -> None:
        calls.append(kw["next_check_at"])  # type: ignore[arg-type]
        if len(calls) == 1:
            raise StoreUnavailable("deadlock")
        await release(job_id, owner, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(h.rt.store, "release", flaky)
    with pytest.raises(StoreUnavailable):
        async with hold(h, job, on_error=lambda exc: Release(Status.QUEUED, h.clock.now + 1.0)) as lease:
            lease.release_as(Status.QUEUED, h.clock.now + 50.0)
    assert calls == [h.clock.now + 50.0, h.clock.now + 1.0]
    assert (await current(h, job.id)).lease_owner is None


async def cancel_inside(
    h: Harness, job: Job, on_entry: Callable[[Lease], None] = lambda lease: None, *,
    on_error: Callable[[Exception], Release | None] | None = None, on_cancel: Release | None = HAND_BACK,
) -> None:
    """Hold `job` (as `hold` does), cancel the holder once inside its block (after `on_entry`), and check
    the cancellation reaches the holder."""
    inside = asyncio.Event()

    async def work() -> None:
        async with hold(h, job, on_error=on_error, on_cancel=on_cancel) as lease:
            on_entry(lease)
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_released_on_cancellation_and_the_cancellation_propagates(h: Harness) -> None:
    job = await leased_job(h)
    await cancel_inside(h, job, lambda lease: lease.release_as(Status.QUEUED, h.clock.now + 1000.0),
                        on_error=lambda exc: Release(Status.QUEUED, 0.0))
    after = await current(h, job.id)
    assert after.lease_owner is None and after.next_check_at == job.next_check_at  # HAND_BACK: as it stood


async def test_a_cancellation_can_keep_the_lease(h: Harness) -> None:
    job = await leased_job(h)
    await cancel_inside(h, job, on_cancel=None)
    assert (await current(h, job.id)).lease_owner == h.rt.owner


async def test_renew_when_due_raises_once_the_lease_is_lost(h: Harness) -> None:
    job = await leased_job(h)
    lease = Lease(h.rt.store, job, h.rt.owner, seconds=h.settings.lease_seconds, clock=h.clock)
    h.clock.advance(h.settings.lease_seconds + 1)  # lapsed: another process takes the job
    assert await ledger.claim(h.rt.store, job.id, "another-replica", now=h.clock.now, lease=60.0) is not None
    with pytest.raises(LeaseLost):
        await lease.renew_when_due()


def test_hand_back_keeps_the_schedule() -> None:
    assert HAND_BACK == Release(None, None, False)

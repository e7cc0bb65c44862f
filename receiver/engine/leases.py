"""Leases on jobs: whoever holds a job's lease is the only process acting on it.

A job is leased when it is claimed (:meth:`Store.claim_due`) or born leased (:func:`receiver.engine.jobs.new_job`).
:func:`claimed` is the one way the engine holds such a lease: it hands the lease back on every way out
of its block (a return, an exception, a cancellation), each as the caller said, so no branch can forget
it and leave the job idle until the lease lapses. While the lease is held, :class:`Lease` renews it,
by time in the background (:meth:`Lease.renewing`) or as bytes arrive (:meth:`Lease.renew_when_due`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from receiver.store import Job, Store, StoreUnavailable
from submitter.status import Status

__all__ = ["HAND_BACK", "Lease", "LeaseLost", "Release", "claimed"]


@dataclass(frozen=True)
class Release:
    """How a lease is handed back (the arguments of :meth:`Store.release`): if the job is still in
    `expect`, its next check is `next_check_at`; else (or with `expect` None) its schedule is kept."""

    expect: Status | None = None
    next_check_at: float | None = None
    polled: bool = False


#: Hand the job back as it stands: its schedule is whatever the work done under the lease set.
HAND_BACK = Release()


class LeaseLost(Exception):
    """Another process holds the job now: stop working on it."""


class Lease:
    """Our lease on one job, while :func:`claimed` holds it."""

    def __init__(self, store: Store, job: Job, owner: str, *, seconds: float, clock: Callable[[], float]) -> None:
        self.store, self.job, self.owner = store, job, owner
        self.seconds, self.clock = seconds, clock
        self.renewed = clock()
        #: How the lease is handed back when the block ends normally.
        self.release: Release = HAND_BACK
        self._after: list[Callable[[], None]] = []

    def release_as(self, expect: Status | None, next_check_at: float | None, *, polled: bool = False) -> None:
        """Hand the lease back this way when the block ends normally (else: :data:`HAND_BACK`)."""
        self.release = Release(expect, next_check_at, polled)

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the lease is handed back (e.g. wake a loop that would claim the job)."""
        self._after.append(callback)

    async def renew(self) -> bool:
        """Extend the lease by its length from now; False if it is no longer ours."""
        self.renewed = now = self.clock()
        return await self.store.renew(self.job.id, self.owner, until=now + self.seconds)

    async def renew_when_due(self) -> None:
        """Renew if a third of the lease passed since the last renewal (called as work progresses, e.g.
        after every chunk of a download); LeaseLost if another process took the job over."""
        if self.clock() - self.renewed > self.seconds / 3 and not await self.renew():
            raise LeaseLost(f"job {self.job.id}: lease taken over by another process")

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Renew the lease every third of its length (real time) while the block runs: a slow call to
        another service does not let the lease lapse under it."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.seconds / 3)
                await self.renew()

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            # gather, not `suppress(CancelledError)` around `await task`: a cancellation of *this* task
            # arriving meanwhile (Ctrl-C, shutdown) must propagate, not be swallowed with the renewer's.
            await asyncio.gather(task, return_exceptions=True)

    async def hand_back(self, release: Release) -> None:
        await self.store.release(self.job.id, self.owner, expect=release.expect,
                                 next_check_at=release.next_check_at, polled=release.polled)


@contextlib.asynccontextmanager
async def claimed(
    store: Store, job: Job, owner: str, *, seconds: float, clock: Callable[[], float],
    on_error: Callable[[Exception], Release | None] | None = None, on_cancel: Release | None = HAND_BACK,
) -> AsyncIterator[Lease]:
    """Hold `job`'s lease (taken by `owner`: claimed, or born leased) for the block; hand it back when
    the block ends.

    - Normally: as :meth:`Lease.release_as` said (by default :data:`HAND_BACK`), then the
      :meth:`Lease.then` callbacks run.
    - On an exception (the block's, or the release's own): as ``on_error(exc)`` says, a
      StoreUnavailable from that release suppressed; None (or no `on_error`) keeps the lease, which
      then lapses by itself. The exception propagates.
    - On cancellation (shutdown ran out of time): `on_cancel`, shielded so it completes; None keeps
      the lease. The cancellation propagates.
    """
    lease = Lease(store, job, owner, seconds=seconds, clock=clock)
    try:
        yield lease
        await lease.hand_back(lease.release)
    except asyncio.CancelledError:
        if on_cancel is not None:
            await asyncio.shield(lease.hand_back(on_cancel))
        raise
    except Exception as exc:
        release = on_error(exc) if on_error is not None else None
        if release is not None:
            with contextlib.suppress(StoreUnavailable):  # else its lease lapses by itself
                await lease.hand_back(release)
        raise
    for callback in lease._after:
        callback()

"""The sweep: submit deferred jobs, poll jobs whose callback never came, fetch results.

One pass is :func:`sweep_once`; `fluxhook serve` runs it in a loop and
`fluxhook sweep` runs it once (for cron). Every job is claimed with a lease
first, so sweeps running side by side never handle the same job twice
(:mod:`receiver.engine.leases`); polls are :mod:`receiver.engine.polling`'s,
downloads :mod:`receiver.engine.downloading`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from receiver.engine.downloading import download_job, store_by
from receiver.engine.jobs import try_submit
from receiver.engine.leases import Lease, Release, claimed
from receiver.engine.polling import poll_job
from receiver.engine.runtime import Runtime
from receiver.engine.schedule import retry_later
from receiver.store import Job, StoreUnavailable
from submitter.status import Status

__all__ = ["SweepReport", "check_pass", "download_loop", "download_pass", "handle", "prune_events", "sweep_loop",
           "sweep_once"]

log = logging.getLogger("fluxhook.sweep")


@dataclass
class SweepReport:
    claimed: int = 0
    actions: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {"claimed": self.claimed, **self.actions}


#: Polls and submits one pass runs at once (API calls: small and quick).
POLL_CONCURRENCY = 16

#: What the sweep does to a claimed job, by its status (Runtime.at_work counts them); anything else is a poll.
WORK = {Status.QUEUED: "submit", Status.SUCCEEDED: "download"}


async def sweep_once(rt: Runtime, *, batch: int = 100, max_batches: int = 50) -> SweepReport:
    """Handle every job that is due now (bounded), then return what was done.

    Polls and submits run beside the downloads, never behind them: one slow result
    server cannot hold up another job's poll (`fluxhook sweep`, `--wait`)."""
    report = SweepReport()
    # Sinks first seen now are owed what this pass changes.
    await rt.relay.register()
    await prune_events(rt, report)
    await asyncio.gather(
        check_pass(rt, report, batch=batch, max_batches=max_batches),
        download_pass(rt, report, limit=batch * max_batches),
    )
    # Results the polls just found are due now: fetch them in this pass too.
    await download_pass(rt, report, limit=batch * max_batches)
    # Then push what all that changed (and any retries due) to the sinks.
    relayed = await rt.relay.run_once()
    report.actions.update({f"deliveries-{k}": v for k, v in relayed.outcomes.items()})
    return report


async def prune_events(rt: Runtime, report: SweepReport) -> None:
    """Drop audit events older than FLUXHOOK_EVENT_RETENTION and outbox events (with their
    deliveries) older than FLUXHOOK_OUTBOX_RETENTION, and forgotten idempotency keys (bounded per call)."""
    now = rt.clock()
    pruned = await rt.store.prune_events(now - rt.settings.event_retention)
    if pruned:
        report.actions["events-pruned"] += pruned
    integrations = rt.settings.integrations
    pruned = await rt.store.prune_outbox(now - integrations.outbox_retention,
                                         idempotent_before=now - integrations.idempotency_ttl)
    if pruned:
        report.actions["outbox-pruned"] += pruned


async def check_pass(rt: Runtime, report: SweepReport, *, batch: int = 100, max_batches: int = 50) -> None:
    """Submits, polls and deadlines of every due job that is not downloading."""
    gate = asyncio.Semaphore(POLL_CONCURRENCY)

    async def run(job: Job) -> None:
        async with gate:
            report.actions[await handle(rt, job)] += 1

    for _ in range(max_batches):
        if rt.stopping.is_set():
            break  # shutting down: take no new work
        jobs = await rt.store.claim_due(
            rt.owner, now=rt.clock(), lease=rt.settings.lease_seconds, limit=batch, downloads=False
        )
        if not jobs:
            break
        report.claimed += len(jobs)
        await asyncio.gather(*(run(job) for job in jobs))
        # A result reported while we held a job's lease (a callback racing its submit answer) could
        # not be claimed then: look for downloads now, not a sweep interval later.
        rt.kick()


async def download_pass(rt: Runtime, report: SweepReport, *, limit: int = 5000) -> None:
    """Fetch the files of due succeeded jobs, `download_concurrency` jobs at a time, until none
    is due. A job is claimed only when a slot is free, so no claimed job waits (and its lease
    lapses) behind slow downloads; while slots are busy, a kick (a result just reported) or
    every `sweep_interval` looks for more."""
    slots = max(1, rt.settings.download_concurrency)
    running: set[asyncio.Task[str]] = set()
    started = 0
    try:
        while True:
            free = min(slots - len(running), limit - started)
            if free > 0 and not rt.stopping.is_set():
                rt.downloads_due.clear()
                jobs = await rt.store.claim_due(
                    rt.owner, now=rt.clock(), lease=rt.settings.lease_seconds, limit=free, downloads=True
                )
                report.claimed += len(jobs)
                started += len(jobs)
                running.update(asyncio.create_task(handle(rt, job)) for job in jobs)
            if not running:
                return
            if free <= 0:
                # Every slot busy: a kick now is served by the claim after the next one finishes
                # (waiting on a set event would spin).
                rt.downloads_due.clear()
            woken = asyncio.ensure_future(rt.downloads_due.wait())
            try:
                await asyncio.wait(running | {woken}, timeout=rt.settings.sweep_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            for task in [t for t in running if t.done()]:
                running.discard(task)
                report.actions[task.result()] += 1
    finally:
        for task in running:  # cancelled (shutdown ran out of time): each hands its lease back
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def handle(rt: Runtime, job: Job) -> str:
    """Do the one thing a claimed job needs, then hand its lease back. Returns what was done."""

    def retry(exc: Exception) -> Release:
        # The database down or refusing this transaction (a deadlock, a failover) is not a bug: soon.
        # A bug must not take the sweep down, nor keep the lease forever: later.
        return Release(job.status, retry_later(0 if isinstance(exc, StoreUnavailable) else 3, rt.clock()))

    kind = WORK.get(job.status, "poll")
    rt.at_work[kind] += 1
    try:
        # Cancelled (shutdown ran out of time): the job is handed back for another process to take now.
        async with claimed(rt.store, job, rt.owner, seconds=rt.settings.lease_seconds, clock=rt.clock,
                           on_error=retry) as lease:
            return await _handle(rt, lease)
    except StoreUnavailable as exc:
        log.warning("job %s: store unavailable, retrying soon: %s", job.id, exc)
        return "store-unavailable"
    except Exception:
        log.exception("sweep failed on job %s", job.id)
        return "error"
    finally:
        rt.at_work[kind] -= 1


async def _handle(rt: Runtime, lease: Lease) -> str:
    job, store, now = lease.job, rt.store, rt.clock()
    if job.status == Status.SUCCEEDED and now >= store_by(job, rt.settings.download_window):
        ended = await store.finish(job.id, Status.EXPIRED, now=now, only_from=frozenset({Status.SUCCEEDED}),
                                   reason=f"result files not stored within {rt.settings.download_window:.0f} s"
                                          " after the job deadline")
        if ended.changed:
            rt.prom.lost(job.provider, "expired")
        return "expired"
    if job.status in (Status.QUEUED, Status.SUBMITTED, Status.RUNNING) and now >= job.deadline_at:
        # Only from the status we claimed it in: a result that arrived meanwhile is kept.
        ended = await store.finish(job.id, Status.EXPIRED, now=now, only_from=frozenset({job.status}),
                                   reason=f"no result within the {rt.settings.job_deadline:.0f} s deadline")
        if ended.changed:
            rt.prom.lost(job.provider, "deadline")
        return "expired"
    if job.status == Status.QUEUED:
        if job.slot_held and job.sending:
            # A submitter died with its request on the wire: the job may exist. Never resend.
            await store.record_submit(job.id, None, None, now=now, next_check_at=job.deadline_at,
                                      note="submit interrupted; outcome unknown")
            return "reconciled"
        if job.slot_held:
            # It died between attempts, after refusals only: nothing was created; try again.
            await store.defer(job.id, next_check_at=now, note="submit interrupted between attempts", now=now)
        await try_submit(rt, lease)
        return "submitted"
    if job.status in (Status.SUBMITTED, Status.RUNNING):
        return await poll_job(rt, lease)
    if job.status == Status.SUCCEEDED:
        return await download_job(rt, lease)
    return "skipped"


async def sweep_loop(rt: Runtime, interval: float) -> None:
    """Submits, polls and deadlines every `interval` seconds until `rt.stopping` is set
    (what `serve` runs in the background; :func:`download_loop` fetches the files).

    Passes start `interval` apart (the next a twentieth of the interval after one that took
    longer), not `interval` after the last one ended: a job that falls due waits at most one
    interval (or one pass, if passes take longer) for the pass that polls it."""
    while not rt.stopping.is_set():
        rt.submits_due.clear()
        started = rt.clock()
        try:
            report = SweepReport()
            await prune_events(rt, report)
            await check_pass(rt, report)
            if report.claimed:
                log.info("sweep: %s", report.as_dict())
        except Exception:
            log.exception("sweep pass failed")
        # Until the next pass is due, a job created for submission (the API) or shutdown wakes it.
        # A pass that took the whole interval (a backlog, a store slow to fail) still leaves a short
        # pause, so the sweep never holds the database's writer back to back.
        await rt.idle(rt.submits_due.wait(), min(interval, max(interval / 20, started + interval - rt.clock())))


async def download_loop(rt: Runtime, interval: float) -> None:
    """Fetch results as soon as a callback reports them (:meth:`Runtime.kick`) and retry
    failed downloads when due, `download_concurrency` at a time, until `rt.stopping` is set."""
    while not rt.stopping.is_set():
        rt.downloads_due.clear()
        try:
            report = SweepReport()
            await download_pass(rt, report)
            if report.claimed:
                log.info("downloads: %s", report.as_dict())
        except Exception:
            log.exception("download pass failed")
        await rt.idle(rt.downloads_due.wait(), interval)

"""The sweep: submit deferred jobs, poll jobs whose callback never came, fetch results.

One pass is :func:`sweep_once`; `fluxhook serve` runs it in a loop and
`fluxhook sweep` runs it once (for cron). Every job is claimed with a lease
first, so sweeps running side by side never handle the same job twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from receiver.engine.jobs import result_expiries, try_submit
from receiver.engine.runtime import Runtime
from receiver.engine.schedule import NOT_FOUND_GRACE, next_poll, retry_later
from receiver.fetch.download import download
from receiver.fetch.errors import DownloadError, redact_url
from receiver.fetch.policy import DownloadPolicy
from receiver.results import StoredFile
from receiver.store import FileRecord, Job, Outcome, StoreUnavailable
from submitter.bodies import Observation
from submitter.errors import PollFailed
from submitter.status import Status
from submitter.urls import too_many_outputs

__all__ = [
    "SweepReport", "check_pass", "download_job", "download_loop", "download_pass", "handle", "prune_events",
    "store_by", "sweep_loop", "sweep_once",
]

log = logging.getLogger("fluxhook.sweep")

#: How a job's note starts while its downloads keep failing (cleared once its files are stored).
DOWNLOAD_NOTE = "download failing"

#: Asking the provider for fresh result URLs after they expired: a crash or an
#: unanswered poll uses one attempt; an answer without fresh URLs ends the job.
REPOLL_ATTEMPTS = 3


@dataclass
class SweepReport:
    claimed: int = 0
    actions: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {"claimed": self.claimed, **self.actions}


#: Polls and submits one pass runs at once (API calls: small and quick).
POLL_CONCURRENCY = 16


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
        rt.kick("")


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
    """Do the one thing a claimed job needs, then release its lease. Returns what was done."""
    try:
        return await _handle(rt, job)
    except asyncio.CancelledError:
        # Shutdown ran out of time: hand the job back for another process to take now.
        await asyncio.shield(rt.store.release(job.id, rt.owner, expect=None, next_check_at=None))
        raise
    except StoreUnavailable as exc:
        # The database is down or refused this transaction (a deadlock, a failover): not a bug.
        log.warning("job %s: store unavailable, retrying soon: %s", job.id, exc)
        with contextlib.suppress(StoreUnavailable):
            await rt.store.release(job.id, rt.owner, expect=job.status, next_check_at=retry_later(0, rt.clock()))
        return "store-unavailable"
    except Exception:
        # A bug must not take the sweep down, nor keep the lease forever.
        log.exception("sweep failed on job %s", job.id)
        with contextlib.suppress(StoreUnavailable):  # else its lease lapses by itself
            await rt.store.release(job.id, rt.owner, expect=job.status, next_check_at=retry_later(3, rt.clock()))
        return "error"


def store_by(rt: Runtime, job: Job) -> float:
    """When a succeeded job's files must be stored, else it ends `expired`: the bound on a job's life."""
    return job.deadline_at + rt.settings.download_window


async def _handle(rt: Runtime, job: Job) -> str:
    store, now = rt.store, rt.clock()
    if job.status == Status.SUCCEEDED and now >= store_by(rt, job):
        ended = await store.finish(job.id, Status.EXPIRED, now=now, only_from=frozenset({Status.SUCCEEDED}),
                                   reason=f"result files not stored within {rt.settings.download_window:.0f} s"
                                          " after the job deadline")
        if ended.changed:
            rt.prom.lost(job.provider, "expired")
        await store.release(job.id, rt.owner, expect=None, next_check_at=None)
        return "expired"
    if job.status in (Status.QUEUED, Status.SUBMITTED, Status.RUNNING) and now >= job.deadline_at:
        # Only from the status we claimed it in: a result that arrived meanwhile is kept.
        ended = await store.finish(job.id, Status.EXPIRED, now=now, only_from=frozenset({job.status}),
                                   reason=f"no result within the {rt.settings.job_deadline:.0f} s deadline")
        if ended.changed:
            rt.prom.lost(job.provider, "deadline")
        await store.release(job.id, rt.owner, expect=None, next_check_at=None)
        return "expired"
    if job.status == Status.QUEUED:
        if job.slot_held and job.sending:
            # A submitter died with its request on the wire: the job may exist. Never resend.
            await store.record_submit(job.id, None, None, now=now, next_check_at=job.deadline_at,
                                      note="submit interrupted; outcome unknown")
            action = "reconciled"
        elif job.slot_held:
            # It died between attempts, after refusals only: nothing was created; try again.
            await store.defer(job.id, next_check_at=now, note="submit interrupted between attempts", now=now)
            await try_submit(rt, job)
            action = "submitted"
        else:
            await try_submit(rt, job)
            action = "submitted"
        await store.release(job.id, rt.owner, expect=None, next_check_at=None)
        return action
    if job.status in (Status.SUBMITTED, Status.RUNNING):
        return await _poll(rt, job)
    if job.status == Status.SUCCEEDED:
        return await download_job(rt, job)
    await store.release(job.id, rt.owner, expect=None, next_check_at=None)
    return "skipped"


async def _poll(rt: Runtime, job: Job) -> str:
    store = rt.store
    if job.provider_job_id is None:
        # Nothing to ask the provider about (its answer never came); only a callback or
        # the deadline can settle this job.
        await store.release(job.id, rt.owner, expect=job.status, next_check_at=job.deadline_at)
        return "waiting"
    try:
        observation = await rt.client(job.provider).poll(job.provider_job_id, job.polling_url)
    except PollFailed as exc:
        log.warning("job %s: %s", job.id, exc,
                    extra={"job_id": job.id, "provider": job.provider, "event": "poll-failed"})
        rt.prom.polls.labels(job.provider, "failed").inc()
        now = rt.clock()
        await store.release(job.id, rt.owner, expect=job.status, polled=True,
                            next_check_at=next_poll(job.polls + 1, now, job.deadline_at, rt.settings))
        return "poll-failed"
    rt.failpoint("mid-sweep")
    rt.prom.polls.labels(job.provider, "answered").inc()
    now = rt.clock()
    later = next_poll(job.polls + 1, now, job.deadline_at, rt.settings)
    outcome = Outcome(status=job.status)
    refusal = too_many_outputs(observation, rt.settings.max_outputs)
    # A poll is the provider's word: it may end the job only from the status we polled it in (a result
    # callback that landed meanwhile made it `succeeded`, which no report may end).
    polled_in = frozenset({job.status})
    if refusal:
        if (await store.finish(job.id, Status.FAILED, now=now, reason=refusal, only_from=polled_in)).changed:
            rt.prom.lost(job.provider, "rejected")
    elif observation.not_found and now - (job.submitted_at or job.created_at) > NOT_FOUND_GRACE:
        if (await store.finish(job.id, Status.FAILED, now=now, reason=observation.reason, only_from=polled_in)).changed:
            rt.prom.lost(job.provider, "provider_failure")
    elif observation.status is not None:
        outcome = await store.apply(job.id, observation, now=now, next_check_at=later,
                                    expires=result_expiries(rt, job.provider, observation))
        if outcome.changed and outcome.status is not None and outcome.status not in (Status.SUBMITTED, Status.RUNNING):
            rt.prom.poll_rescues.labels(job.provider, str(outcome.status)).inc()  # no callback told us
            rt.prom.ended(job.provider, outcome.status)
    # Unchanged (unknown, the same or a stale status): poll again later, not in this very pass.
    await store.release(job.id, rt.owner, expect=job.status, next_check_at=later, polled=True)
    if outcome.status == Status.SUCCEEDED:
        rt.kick(job.id)  # its files are due now
    return "polled"


async def download_job(rt: Runtime, job: Job) -> str:
    """Fetch every file of a succeeded job not stored yet; `stored` when all are in place."""
    store = rt.store
    policy = DownloadPolicy.from_settings(rt.settings, job.provider)
    lease = _Lease(rt, job.id)
    # We hold the job's lease, so no live download writes here: temp files are a dead one's.
    await rt.results.clean_partials(job.id, 0.0)
    repolled = False  # at most one re-poll per pass; job.repolls bounds them across passes and crashes
    while True:
        files = await store.files(job.id)
        pending = [f for f in files if not f.stored]
        if not pending:
            if files:
                if (await store.finish(job.id, Status.STORED, now=rt.clock())).changed:
                    since = job.submitted_at or job.created_at
                    rt.prom.submit_to_stored.labels(job.provider).observe(max(0.0, rt.clock() - since))
                if job.note and job.note.startswith(DOWNLOAD_NOTE):
                    await store.set_note(job.id, None, now=rt.clock())  # it was stuck; it is not now
            elif (await store.finish(job.id, Status.FAILED, now=rt.clock(),
                                     reason="no result files recorded")).changed:
                rt.prom.lost(job.provider, "provider_failure")
            await store.release(job.id, rt.owner, expect=None, next_check_at=None)
            return "stored" if files else "failed"
        failure: DownloadError | None = None
        for record in sorted(pending, key=lambda f: f.expires_at):
            result = await _fetch(rt, job, record, policy, lease)
            if isinstance(result, DownloadError):
                await store.file_failed(job.id, record.n)
                failure = result
                if result.kind != "transient":
                    break
                continue
            await store.store_file(job.id, record.n, path=result.key,
                                   size=result.size, sha256=result.sha256, content_type=result.content_type)
            rt.prom.url_margin.labels(job.provider).observe(max(0.0, record.expires_at - rt.clock()))
        if failure is None:
            continue
        now = rt.clock()
        if failure.kind == "rejected":
            if (await store.finish(job.id, Status.FAILED, now=now, reason=str(failure))).changed:
                rt.prom.lost(job.provider, "rejected")
        elif failure.kind == "expired":
            if not repolled and job.provider_job_id and job.repolls < REPOLL_ATTEMPTS:
                repolled = True
                fresh = await _repoll(rt, job)
                if fresh:
                    continue
                if fresh is None and job.repolls + 1 < REPOLL_ATTEMPTS:  # no answer: ask again later
                    await store.release(job.id, rt.owner, expect=Status.SUCCEEDED,
                                        next_check_at=min(retry_later(job.repolls + 1, now), store_by(rt, job)))
                    return "repoll-retry"
            if (await store.finish(job.id, Status.EXPIRED, now=now,
                                   reason=f"result URL expired before download and no fresh one: {failure}")).changed:
                rt.prom.lost(job.provider, "expired")
        else:
            attempts = max(f.attempts for f in pending) + 1
            retry_at = min(retry_later(attempts, now), store_by(rt, job))
            # Stuck (e.g. the results folder is not writable): say why on the job and in the log.
            note = rt.redactor.scrub(f"{DOWNLOAD_NOTE} (attempt {attempts}, retrying): {failure}", job_id=job.id)
            await store.set_note(job.id, note, now=now)
            log.warning("job %s: download failed (attempt %d), retrying in %.0f s: %s", job.id, attempts,
                        retry_at - now, note, extra={"job_id": job.id, "provider": job.provider,
                                                     "event": "download-retry"})
            await store.release(job.id, rt.owner, expect=Status.SUCCEEDED, next_check_at=retry_at)
            return "download-retry"
        await store.release(job.id, rt.owner, expect=None, next_check_at=None)
        return f"download-{failure.kind}"


class LeaseLost(Exception):
    """Another process holds the job now: stop downloading its files."""


class _Lease:
    """Keeps our lease on a job alive while its files download: called after every chunk received,
    it renews by time (every third of the lease) as long as bytes flow. Between two chunks at most
    the download client's read timeout passes (a quarter of the lease, see Runtime.open)."""

    def __init__(self, rt: Runtime, job_id: str) -> None:
        self.rt, self.job_id = rt, job_id
        self.renewed = rt.clock()

    async def keep(self, _size: int) -> None:
        self.rt.failpoint("mid-download")
        now = self.rt.clock()
        if now - self.renewed > self.rt.settings.lease_seconds / 3:
            self.renewed = now
            if not await self.rt.store.renew(self.job_id, self.rt.owner, until=now + self.rt.settings.lease_seconds):
                raise LeaseLost(f"job {self.job_id}: lease taken over by another process")


async def _fetch(
    rt: Runtime, job: Job, record: FileRecord, policy: DownloadPolicy, lease: _Lease
) -> StoredFile | DownloadError:
    """One file: the stored file, or why not (a transient failure past the URL's expiry counts as expired)."""
    sink = rt.results.writer(job.id, record.n)
    started = time.perf_counter()
    try:
        # A server trickling bytes never trips a per-read timeout: bound the whole transfer.
        async with asyncio.timeout(rt.settings.download_timeout):
            stored = await download(rt.cdn, record.url, sink, policy, resolver=rt.resolver, on_chunk=lease.keep)
        rt.prom.downloaded(job.provider, "stored", time.perf_counter() - started, stored.size)
        return stored
    except TimeoutError:
        error = DownloadError("transient", f"download took over {rt.settings.download_timeout:.0f} s")
    except LeaseLost as exc:
        error = DownloadError("transient", str(exc))
    except DownloadError as exc:
        error = exc
    except Exception as exc:  # a bug must not be retried forever: transient, so the URL's expiry ends it
        log.exception("job %s: unexpected download failure", job.id)
        error = DownloadError("transient", f"unexpected {type(exc).__name__}")
    if error.kind == "transient" and rt.clock() >= record.expires_at:
        error.kind = "expired"
    rt.prom.downloaded(job.provider, error.kind, time.perf_counter() - started, 0)
    return error


async def _repoll(rt: Runtime, job: Job) -> bool | None:
    """Ask the provider for fresh result URLs: True if it gave some, False if it answered
    without any, None if it did not answer. Each attempt counts, crashed ones included."""
    assert job.provider_job_id is not None
    await rt.store.note_repoll(job.id)
    try:
        observation: Observation = await rt.client(job.provider).poll(job.provider_job_id, job.polling_url)
    except PollFailed as exc:
        log.warning("job %s: re-poll for fresh URLs failed: %s", job.id, exc)
        return None
    if observation.status != Status.SUCCEEDED or not observation.urls or too_many_outputs(
            observation, rt.settings.max_outputs):
        return False
    log.info("job %s: fresh result URL from %s", job.id, redact_url(observation.urls[0]))
    await rt.store.apply(job.id, observation, now=rt.clock(), next_check_at=rt.clock(),
                         expires=result_expiries(rt, job.provider, observation))
    return True


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

"""Downloading a succeeded job's result files under its lease: retries, fresh URLs, and the bound on a job's life."""

from __future__ import annotations

import asyncio
import logging
import time

from receiver.engine.jobs import result_expiries
from receiver.engine.leases import Lease, LeaseLost
from receiver.engine.runtime import Runtime
from receiver.engine.schedule import retry_later
from receiver.fetch.download import download
from receiver.fetch.errors import DownloadError
from receiver.fetch.policy import DownloadPolicy
from receiver.results import StorageError, StoredFile
from receiver.store import FileRecord, Job
from submitter.bodies import Observation
from submitter.errors import PollFailed
from submitter.status import Status
from submitter.urls import redact_url, too_many_outputs

__all__ = ["DOWNLOAD_NOTE", "REPOLL_ATTEMPTS", "download_job", "store_by"]

log = logging.getLogger("fluxhook.sweep")

#: How a job's note starts while its downloads keep failing (cleared once its files are stored).
DOWNLOAD_NOTE = "download failing"

#: Asking the provider for fresh result URLs after they expired: a crash or an
#: unanswered poll uses one attempt; an answer without fresh URLs ends the job.
REPOLL_ATTEMPTS = 3


def store_by(job: Job, download_window: float) -> float:
    """When a succeeded job's files must be stored, else it ends `expired`: the bound on a job's life."""
    return job.deadline_at + download_window


async def download_job(rt: Runtime, lease: Lease) -> str:
    """Fetch every file of a succeeded job not stored yet; `stored` when all are in place."""
    job, store = lease.job, rt.store
    policy = DownloadPolicy.from_settings(rt.settings, job.provider)
    deadline = store_by(job, rt.settings.download_window)
    # We hold the job's lease, so no live download writes here: temp files are a dead one's.
    try:
        await rt.results.clean_partials(job.id, 0.0)
    except StorageError as exc:  # the store itself fails (a bucket that does not exist): as a failed download
        pending = [f for f in await store.files(job.id) if not f.stored]
        for record in pending:
            await store.file_failed(job.id, record.n)
        return await _retry_later(rt, lease, pending, DownloadError("transient", str(exc), storage=exc.kind))
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
                    lease.release_as(Status.SUCCEEDED, min(retry_later(job.repolls + 1, now), deadline))
                    return "repoll-retry"
            if (await store.finish(job.id, Status.EXPIRED, now=now,
                                   reason=f"result URL expired before download and no fresh one: {failure}")).changed:
                rt.prom.lost(job.provider, "expired")
        else:
            return await _retry_later(rt, lease, pending, failure)
        return f"download-{failure.kind}"


async def _retry_later(rt: Runtime, lease: Lease, pending: list[FileRecord], failure: DownloadError) -> str:
    """A transient failure: say why on the job (e.g. the results folder is not writable) and in the log, and
    hand the job back until its next attempt. A failing result store fails every job the same way: its
    cause is logged once per STORAGE_LOG_EVERY seconds (Runtime.storage_log), not once per job and sweep."""
    job, now = lease.job, rt.clock()
    attempts = max((f.attempts for f in pending), default=0) + 1
    retry_at = min(retry_later(attempts, now), store_by(job, rt.settings.download_window))
    note = rt.redactor.scrub(f"{DOWNLOAD_NOTE} (attempt {attempts}, retrying): {failure}", job_id=job.id)
    await rt.store.set_note(job.id, note, now=now)
    line = ("job %s: download failed (attempt %d), retrying in %.0f s: %s", job.id, attempts, retry_at - now, note)
    extra: dict[str, object] = {"job_id": job.id, "provider": job.provider, "event": "download-retry"}
    if failure.storage is None:
        log.warning(*line, extra=extra)
    else:
        rt.storage_log.log(logging.WARNING, f"results: {failure.storage}", *line, extra=extra)
    lease.release_as(Status.SUCCEEDED, retry_at)
    return "download-retry"


async def _fetch(
    rt: Runtime, job: Job, record: FileRecord, policy: DownloadPolicy, lease: Lease
) -> StoredFile | DownloadError:
    """One file: the stored file, or why not (a transient failure past the URL's expiry counts as expired).
    The lease is renewed as bytes arrive: between two chunks at most the download client's read timeout
    passes (a quarter of the lease, see Runtime.open), so a renewal every third of it always comes in time."""

    async def on_chunk(_size: int) -> None:
        rt.failpoint("mid-download")
        await lease.renew_when_due()

    sink = rt.results.writer(job.id, record.n)
    started = time.perf_counter()
    try:
        # A server trickling bytes never trips a per-read timeout: bound the whole transfer.
        async with asyncio.timeout(rt.settings.download_timeout):
            stored = await download(rt.cdn, record.url, sink, policy, resolver=rt.resolver, on_chunk=on_chunk)
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

"""Downloading again a job whose results were paid for but not stored: what `fluxhook retry` and
`POST /v1/jobs/{id}/retry` do."""

from __future__ import annotations

from receiver.engine.runtime import Runtime
from submitter.status import Status

__all__ = ["NotRetryable", "reopen_download"]

GAVE_UP = (Status.FAILED, Status.EXPIRED)


class NotRetryable(Exception):
    """The job is not one whose download failed or expired after the provider delivered: resubmit it instead."""


async def reopen_download(rt: Runtime, job_id: str) -> int:
    """Reopen `job_id` for another download of its files; returns how many files are due again.

    Only a job that ended `failed`/`expired` in OUR download path qualifies: it has a provider task
    and result files not stored (file rows exist only once the provider reported a result). The
    store moves it back to `succeeded` (`reopen_for_retry`, the one sanctioned exception to final
    statuses) and the download pass is woken; expired URLs are re-polled for fresh ones. KeyError
    for an unknown job; NotRetryable (saying why) for any other job, e.g. one the provider failed or
    moderated, or one that was canceled. A job already `succeeded` with files pending (retried a moment
    ago, or its first download still running) is left as it is: a repeated retry changes nothing."""
    job = await rt.store.get_job(job_id)
    if job is None:
        raise KeyError(job_id)
    files = await rt.store.files(job_id)
    pending = [f for f in files if not f.stored]
    if job.status == Status.SUCCEEDED and pending:
        return len(pending)
    if job.status not in GAVE_UP or not job.provider_job_id or not pending:
        why = (f"it is {job.status}" if job.status not in GAVE_UP
               else "the provider never reported a result for it" if not files
               else "it has no provider task id" if not job.provider_job_id else "its files are all stored")
        raise NotRetryable(f"job {job_id} cannot be retried: {why}. A retry is for jobs whose download failed "
                           "or expired after the provider delivered; resubmit otherwise")
    now = rt.clock()
    if not await rt.store.reopen_for_retry(job_id, now=now, store_until=now):
        raise NotRetryable(f"job {job_id} changed meanwhile; look at it again")
    rt.kick()
    return len(pending)

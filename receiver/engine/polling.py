"""Polling a job whose callback has not come: what the provider says, applied from the status we polled it in."""

from __future__ import annotations

import logging

from receiver.engine.jobs import result_expiries
from receiver.engine.leases import Lease
from receiver.engine.runtime import Runtime
from receiver.engine.schedule import NOT_FOUND_GRACE, next_poll
from receiver.store import Outcome
from submitter.errors import PollFailed
from submitter.status import Status
from submitter.urls import too_many_outputs

__all__ = ["poll_job"]

log = logging.getLogger("fluxhook.sweep")


async def poll_job(rt: Runtime, lease: Lease) -> str:
    """Ask the provider about a submitted or running job we hold the lease of; says how the lease goes back."""
    job, store = lease.job, rt.store
    if job.provider_job_id is None:
        # Nothing to ask the provider about (its answer never came); only a callback or
        # the deadline can settle this job.
        lease.release_as(job.status, job.deadline_at)
        return "waiting"
    try:
        observation = await rt.client(job.provider).poll(job.provider_job_id, job.polling_url)
    except PollFailed as exc:
        log.warning("job %s: %s", job.id, exc,
                    extra={"job_id": job.id, "provider": job.provider, "event": "poll-failed"})
        rt.prom.polls.labels(job.provider, "failed").inc()
        lease.release_as(job.status, next_poll(job.polls + 1, rt.clock(), job.deadline_at, rt.settings), polled=True)
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
    lease.release_as(job.status, later, polled=True)
    if outcome.status == Status.SUCCEEDED:
        lease.then(rt.kick)  # its files are due now: the download loop can claim them once the lease is back
    return "polled"

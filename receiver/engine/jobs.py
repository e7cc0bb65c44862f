"""Submitting a job: ledger first, then the provider, within the provider's concurrency cap."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from receiver.engine.leases import Lease, claimed
from receiver.engine.runtime import Runtime
from receiver.engine.schedule import SLOT_WAIT, first_check, retry_later
from receiver.store import Event, Job, JobSummary, Outcome
from receiver.store.inputs import has_references
from submitter.bodies import Observation
from submitter.dialects import Dialect
from submitter.errors import PollFailed, ProviderUnavailable, SubmitAmbiguous, SubmitRejected
from submitter.signing import derive_job_keys
from submitter.status import Status
from submitter.urls import expiries

__all__ = [
    "NotCancelable", "apply_report", "callback_url", "cancel_job", "create_api_job", "job_view", "new_job",
    "send_new", "submit", "try_submit",
]

log = logging.getLogger("fluxhook.jobs")


class NotCancelable(Exception):
    """The job finished otherwise, or its results are being stored: it cannot be canceled."""

    def __init__(self, status: Status) -> None:
        super().__init__(f"the job is {status}: only queued, submitted and running jobs can be canceled")
        self.status = status


def new_job_id() -> str:
    return "fh_" + uuid.uuid4().hex


def callback_url(public_url: str, master: bytes, provider: str, job_id: str) -> tuple[str, str]:
    """The job's webhook URL and webhook secret, both derived, never stored."""
    keys = derive_job_keys(master, provider, job_id)
    return f"{public_url}/hooks/{provider}/{job_id}/{keys.token}", keys.webhook_secret


WEBHOOK_EVENTS = ("start", "output", "logs", "completed")


def submit_options(dialect: Dialect, model: str, events: Sequence[str] | None) -> dict[str, Any]:
    """Check what the user asked for against the provider's dialect; ValueError names the problem."""
    dialect.check_model(model)
    if events is None:
        return {}
    if dialect.signature != "standard-webhooks":
        raise ValueError(f"{dialect.name} has no webhook event filter; --events is for Replicate providers")
    unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
    if unknown or not events:
        raise ValueError(f"webhook events must be among {', '.join(WEBHOOK_EVENTS)}; got {', '.join(events) or 'none'}")
    if "completed" not in events:
        raise ValueError("the webhook events must include 'completed' (the result), or the job can only be polled")
    return {"events": [e for e in WEBHOOK_EVENTS if e in events]}


def _job(
    rt: Runtime, provider: str, model: str, params: Mapping[str, Any], *, events: Sequence[str] | None,
    metadata: Mapping[str, Any] | None, leased: bool, created_by: str | None = None,
) -> Job:
    options = submit_options(rt.settings.provider(provider).dialect, model, events)
    rt.settings.require_public()
    now = rt.clock()
    return Job(
        id=new_job_id(),
        provider=provider,
        model=model,
        params=dict(params),
        options=options,
        metadata=dict(metadata or {}),
        status=Status.QUEUED,
        created_at=now,
        deadline_at=now + rt.settings.job_deadline,
        next_check_at=now,
        # Born leased: no sweeper can pick the job up between its creation and our submit.
        lease_owner=rt.owner if leased else None,
        lease_until=now + rt.settings.lease_seconds if leased else None,
        created_by=created_by,
    )


async def new_job(
    rt: Runtime, provider: str, model: str, params: Mapping[str, Any], *, events: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Job:
    """Commit the ledger row (status `queued`) and hold its lease for the submit that follows."""
    job = _job(rt, provider, model, params, events=events, metadata=metadata, leased=True)
    await rt.store.create_job(job)
    rt.failpoint("after-ledger")
    return job


async def create_api_job(
    rt: Runtime, provider: str, model: str, params: Mapping[str, Any], *, events: Sequence[str] | None,
    metadata: Mapping[str, Any] | None, idempotency: tuple[str, str] | None, created_by: str | None = None,
) -> tuple[Job, bool]:
    """Commit a queued job for the sweep to submit (due at once, not leased: whichever process
    sweeps next sends it; `serve` is woken now), recording the API key that asked (`created_by`).
    With `idempotency` (scoped key, request fingerprint), a repeat returns the job the key already
    names: (job, created)."""
    job = _job(rt, provider, model, params, events=events, metadata=metadata, leased=False, created_by=created_by)
    if idempotency is None:
        await rt.store.create_job(job)
        created = True
    else:
        key, fingerprint = idempotency
        job, created = await rt.store.create_job_once(
            job, key=key, fingerprint=fingerprint, now=rt.clock(), ttl=rt.settings.integrations.idempotency_ttl
        )
    if created:
        rt.wake_sweep()
    return job, created


async def cancel_job(rt: Runtime, job_id: str) -> Job:
    """End a job `canceled` (later results are ignored: the status is final) and ask the provider
    to cancel where it can. KeyError if unknown; NotCancelable if it finished otherwise or its
    results are being stored."""
    job = await rt.store.get_job(job_id)
    if job is None:
        raise KeyError(job_id)
    if job.status != Status.CANCELED:
        outcome = await rt.store.finish(job_id, Status.CANCELED, now=rt.clock(), reason="canceled on request")
        if outcome.status != Status.CANCELED:
            raise NotCancelable(outcome.status or job.status)
        job = await rt.store.get_job(job_id) or job
        await _cancel_at_provider(rt, job)
    return job


async def _cancel_at_provider(rt: Runtime, job: Job) -> None:
    """Best effort: the job is canceled in the ledger whatever the provider says."""
    if not job.provider_job_id:
        return  # not submitted yet (the sweep will not), or the submit is on the wire: see try_submit
    try:
        await rt.client(job.provider).cancel(job.provider_job_id)
    except (PollFailed, ProviderUnavailable) as exc:
        log.warning("cancel %s: the provider's cancel failed: %s", job.id, exc)


async def job_view(rt: Runtime, job: Job | JobSummary) -> dict[str, Any]:
    """The job (or a listing's summary of it: the same view) as the API shows it, with its stored files."""
    return job.view(await rt.store.files(job.id), rt.results.location)


async def submit(
    rt: Runtime, provider: str, model: str, params: Mapping[str, Any], *, events: Sequence[str] | None = None
) -> Job:
    """Record a job and send it; returns the job as it stands afterwards."""
    job = await new_job(rt, provider, model, params, events=events)
    await send_new(rt, job)
    found = await rt.store.get_job(job.id)
    assert found is not None
    return found


async def send_new(rt: Runtime, job: Job) -> Status:
    """One submit attempt for a job :func:`new_job` just made, under the lease it was born with, handed back
    after. Interrupted (an error, Ctrl-C), the job keeps its lease: the sweep settles it once the lease lapses."""
    async with claimed(rt.store, job, rt.owner, seconds=rt.settings.lease_seconds, clock=rt.clock,
                       on_cancel=None) as lease:
        return await try_submit(rt, lease)


async def _request_params(rt: Runtime, job: Job) -> dict[str, Any]:
    """The params the submit request is built from, exactly as they were given: a job read from the
    ledger holds its large inputs as references (receiver/store/inputs.py), put back here."""
    if not has_references(job.params):
        return job.params
    params = await rt.store.job_params(job.id)
    return job.params if params is None else params


async def try_submit(rt: Runtime, lease: Lease) -> Status:
    """One submit attempt for a queued job whose lease we hold; returns the status it leaves."""
    job = lease.job
    public_url, master = rt.settings.require_public()
    now = rt.clock()
    store = rt.store
    cap = rt.settings.cap_for(job.provider, "")
    model_cap = rt.settings.cap_for(job.provider, job.model)
    if not await store.reserve_slot(job.id, cap=cap, model_cap=model_cap, now=now):
        await store.defer(
            job.id, next_check_at=now + SLOT_WAIT, now=now, release_slot=False,
            note=f"waiting for a free {job.provider} slot (cap {min(cap, model_cap)} active jobs)",
        )
        return Status.QUEUED
    url, secret = callback_url(public_url, master, job.provider, job.id)
    client = rt.client(job.provider)
    params = await _request_params(rt, job)
    try:
        # Renewed while a slow submit runs, so no sweeper takes the job for an interrupted one
        # (which would leave it waiting for a callback that may never come).
        async with lease.renewing():
            answer = await client.submit(
                job.model, params, url, secret, job.options.get("events", ()),
                budget=rt.settings.lease_seconds / 2,  # retries end well inside a lease, renewed or not
                on_wire=lambda sending: store.mark_sending(job.id, sending),
            )
    except SubmitRejected as exc:
        outcome = await store.finish(job.id, Status.FAILED, now=rt.clock(), reason=str(exc),
                                     only_from=frozenset({Status.QUEUED}))
        return outcome.status or Status.FAILED
    except ProviderUnavailable as exc:
        later = retry_later(job.submit_attempts, rt.clock(), exc.retry_after)
        await store.defer(job.id, next_check_at=min(later, job.deadline_at), note=str(exc), now=rt.clock())
        return Status.QUEUED
    except SubmitAmbiguous as exc:
        # The job may exist: never resubmit. Its callback can still find it (the URL names
        # our job id); otherwise the deadline ends it.
        now = rt.clock()
        outcome = await store.record_submit(
            job.id, None, None, now=now, next_check_at=job.deadline_at, note=f"submit outcome unknown: {exc}"
        )
        return outcome.status or Status.SUBMITTED
    rt.failpoint("before-submit-recorded")
    now = rt.clock()
    outcome = await store.record_submit(
        job.id, answer.provider_job_id, answer.polling_url, now=now,
        next_check_at=first_check(now, job.deadline_at, rt.settings),
    )
    if outcome.status == Status.CANCELED:
        # Canceled while the submit was on the wire: cancel the task the provider just accepted.
        canceled = await store.get_job(job.id)
        if canceled is not None:
            await _cancel_at_provider(rt, canceled)
    return outcome.status or Status.SUBMITTED


def result_expiries(rt: Runtime, provider: str, observation: Observation) -> tuple[float, ...]:
    """When each of `observation`'s result URLs stops working (submitter.urls.expiries with this
    provider's typical URL lifetime, counted at the runtime's clock)."""
    return expiries(observation, now=rt.clock(), lifetime=rt.settings.provider(provider).dialect.url_lifetime)


async def apply_report(
    rt: Runtime, provider: str, job_id: str, observation: Observation, *, now: float, event: Event | None = None,
) -> Outcome:
    """Apply what the provider said of a job outside a poll (a callback, or one replayed): results make
    the job due for download at once, anything else pushes its first poll back by POLL_AFTER (the
    store caps it at the deadline); each result URL gets its expiry. The caller has refused a
    listing of too many outputs (:func:`~submitter.urls.too_many_outputs`)."""
    next_check = now if observation.status == Status.SUCCEEDED else now + rt.settings.poll_after
    return await rt.store.apply(job_id, observation, now=now, event=event, next_check_at=next_check,
                                expires=result_expiries(rt, provider, observation),
                                keep_events=rt.settings.max_events_per_job)

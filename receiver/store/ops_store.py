"""The :class:`~receiver.store.protocol.Store` interface over the shared operations, for every backend.

A backend supplies `_op` (run an operation in a write transaction) and `_read_op`
(run it without one); every method of the interface is written here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from receiver.store.inputs import has_large
from receiver.store.models import AttemptRecord, Delivery, Event, FileRecord, Job, OutboxEvent, Outcome, SinkState
from receiver.store.sql import audit, hourly, inputs, jobs, leases, listing, outbox, schema, sessions, transitions
from receiver.store.sql import sink_deliveries as sent
from receiver.store.sql.plumbing import Op, SqlDialect
from receiver.store.summary import JobSummary, ProviderHour, ProviderStats
from submitter.bodies import Observation
from submitter.status import Status

__all__ = ["OpsStore"]

T = TypeVar("T")


class OpsStore:
    """Every Store method as one shared operation; subclasses say how an operation runs."""

    #: The backend's SQL dialect (placeholders, locking, DDL spellings).
    dialect: SqlDialect

    def __init__(self) -> None:
        #: Where a stored file's path lives, as events show it (the result store's `location`).
        self._locate: Callable[[str], str] | None = None
        #: Called after every operation that changed a job's status (and so wrote an event).
        self._listeners: list[Callable[[], None]] = []

    def set_locator(self, locate: Callable[[str], str]) -> None:
        self._locate = locate

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self, outcome: Outcome) -> Outcome:
        if outcome.changed:
            for listener in self._listeners:
                listener()
        return outcome

    async def migrate(self, *, apply: bool = True) -> tuple[int, list[int]]:
        """(version before, versions applied, or pending without `apply`)."""
        return await self._op(schema.migrate(self.dialect, time.time(), apply=apply))

    async def _op(self, op: Op[T]) -> T:
        raise NotImplementedError

    async def _read_op(self, op: Op[T]) -> T:
        raise NotImplementedError

    async def _single(self, op: Op[T]) -> T:
        """An operation of one write statement: atomic by itself; a backend may skip BEGIN/COMMIT."""
        return await self._op(op)

    async def create_job(self, job: Job) -> None:
        # With large inputs (stored beside the job) it is several statements: one transaction.
        run = self._op if has_large(job.params) else self._single
        await run(jobs.create_job(job))

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read_op(jobs.get_job(job_id))

    async def create_job_once(
        self, job: Job, *, key: str, fingerprint: str, now: float, ttl: float
    ) -> tuple[Job, bool]:
        job_id, created = await self._op(jobs.create_job_once(job, key, fingerprint, now, ttl))
        found = await self.get_job(job_id)
        assert found is not None
        return found, created

    async def list_jobs(
        self, status: Status | None = None, limit: int = 100, *, provider: str | None = None,
        before: tuple[float, str] | None = None, created_by: str | None = None,
    ) -> list[Job]:
        return await self._read_op(jobs.list_jobs(status, limit, provider, before, created_by))

    async def job_summaries(
        self, status: Status | None = None, limit: int = 100, *, provider: str | None = None,
        before: tuple[float, str] | None = None, created_by: str | None = None,
    ) -> list[JobSummary]:
        return await self._read_op(listing.job_summaries(status, limit, provider, before, created_by))

    async def get_summary(self, job_id: str) -> JobSummary | None:
        return await self._read_op(listing.get_summary(job_id))

    async def job_params(self, job_id: str) -> dict[str, Any] | None:
        return await self._read_op(inputs.job_params(job_id))

    async def files(self, job_id: str) -> list[FileRecord]:
        return await self._read_op(jobs.files(job_id))

    async def reserve_slot(self, job_id: str, *, cap: int, model_cap: int, now: float) -> bool:
        return await self._op(transitions.reserve_slot(job_id, cap, model_cap, now))

    async def record_submit(
        self, job_id: str, provider_job_id: str | None, polling_url: str | None, *, now: float,
        next_check_at: float | None, note: str | None = None,
    ) -> Outcome:
        return self._changed(await self._op(
            transitions.record_submit(job_id, provider_job_id, polling_url, now, next_check_at, note)
        ))

    async def defer(
        self, job_id: str, *, next_check_at: float, note: str | None, now: float, release_slot: bool = True
    ) -> None:
        await self._single(transitions.defer(job_id, next_check_at, note, now, release_slot))

    async def apply(
        self, job_id: str, observation: Observation, *, now: float, next_check_at: float | None,
        event: Event | None = None, expires: tuple[float, ...] = (), keep_events: int | None = None,
    ) -> Outcome:
        return self._changed(await self._op(
            transitions.apply(job_id, observation, now, next_check_at, event, expires, keep_events)
        ))

    async def finish(
        self, job_id: str, status: Status, *, now: float, reason: str | None = None,
        only_from: frozenset[Status] | None = None,
    ) -> Outcome:
        return self._changed(await self._op(transitions.finish(job_id, status, now, reason, only_from, self._locate)))

    async def claim_due(
        self, owner: str, *, now: float, lease: float, limit: int, downloads: bool | None = None
    ) -> list[Job]:
        return await self._single(leases.claim_due(owner, now, lease, limit, downloads))

    async def mark_sending(self, job_id: str, sending: bool) -> None:
        await self._single(leases.mark_sending(job_id, sending))

    async def renew(self, job_id: str, owner: str, *, until: float) -> bool:
        return await self._single(leases.renew(job_id, owner, until))

    async def release(
        self, job_id: str, owner: str, *, expect: Status | None, next_check_at: float | None, polled: bool = False
    ) -> None:
        await self._single(leases.release(job_id, owner, expect, next_check_at, polled))

    async def note_repoll(self, job_id: str) -> None:
        await self._single(jobs.note_repoll(job_id))

    async def set_note(self, job_id: str, note: str | None, *, now: float) -> None:
        await self._single(jobs.set_note(job_id, note, now))

    async def store_file(
        self, job_id: str, n: int, *, path: str, size: int, sha256: str, content_type: str
    ) -> None:
        await self._op(jobs.store_file(job_id, n, path, size, sha256, content_type))

    async def file_failed(self, job_id: str, n: int) -> None:
        await self._single(jobs.file_failed(job_id, n))

    async def prune_events(self, before: float, *, limit: int = 5000) -> int:
        return await self._single(audit.prune_events(before, limit))

    async def counts(self) -> dict[str, int]:
        return await self._read_op(jobs.counts())

    async def provider_stats(
        self, since: tuple[float, ...], *, limit: int = 10000, quantiles: tuple[int, ...] = (50, 95),
        created_by: str | None = None,
    ) -> list[ProviderStats]:
        return await self._read_op(listing.provider_stats(since, limit, quantiles, created_by))

    async def provider_hourly(
        self, since: float, *, hours: int = 24, limit: int = 10000, quantiles: tuple[int, ...] = (50, 95),
        created_by: str | None = None,
    ) -> list[ProviderHour]:
        return await self._read_op(hourly.provider_hourly(since, hours, limit, quantiles, created_by))

    # -- the outbox and its deliveries ----------------------------------------------------

    async def events_after(
        self, after: int, *, limit: int = 500, job_id: str | None = None, types: frozenset[str] | None = None,
        created_by: str | None = None,
    ) -> list[OutboxEvent]:
        return await self._read_op(outbox.events_after(after, limit, job_id, types, created_by))

    async def last_seq(self) -> int:
        return await self._read_op(outbox.last_seq())

    async def register_sink(self, name: str, kind: str, display: str, *, now: float) -> SinkState:
        return await self._op(sent.register_sink(name, kind, display, now))

    async def sinks(self) -> list[SinkState]:
        return await self._read_op(sent.sinks())

    async def disable_sink(self, name: str, reason: str, *, now: float) -> bool:
        return await self._single(sent.set_sink_disabled(name, reason, now))

    async def enable_sink(self, name: str, *, now: float) -> bool:
        return await self._op(sent.enable_sink(name, now))

    async def fan_out(self, name: str, types: frozenset[str], *, now: float, limit: int = 1000) -> int:
        return await self._op(sent.fan_out(name, types, now, limit))

    async def claim_deliveries(
        self, owner: str, *, sink: str, now: float, lease: float, limit: int
    ) -> list[tuple[Delivery, OutboxEvent]]:
        return await self._op(sent.claim_deliveries(owner, sink, now, lease, limit))

    async def record_attempts(self, owner: str, records: list[AttemptRecord]) -> None:
        await self._op(sent.record_attempts(owner, tuple(records)))

    async def deliveries(
        self, state: str | None = None, *, limit: int = 100, event_id: str | None = None
    ) -> list[Delivery]:
        return await self._read_op(sent.deliveries(state, limit, event_id))

    async def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        return await self._read_op(sent.delivery_attempts(delivery_id))

    async def redeliver(
        self, event_id: str | None, *, failed: bool = False, sinks_for: dict[str, frozenset[str]], now: float
    ) -> int:
        return await self._op(sent.redeliver(event_id, failed, sinks_for, now))

    async def prune_outbox(self, before: float, *, idempotent_before: float, limit: int = 5000) -> int:
        return await self._op(outbox.prune_outbox(before, limit, idempotent_before))

    # -- the CLI's reads (fluxhook events, replay, report) and its one retry exception ------

    async def audit_events(self, job_id: str, *, limit: int = 100_000) -> list[dict[str, Any]]:
        return await self._read_op(audit.audit_events(job_id, limit))

    async def audit_event(self, event_id: int) -> dict[str, Any] | None:
        return await self._read_op(audit.audit_event(event_id))

    async def reopen_for_retry(self, job_id: str, *, now: float, store_until: float) -> bool:
        return await self._op(transitions.reopen_for_retry(job_id, now, store_until))

    async def reconciliation(self, since: float | None = None, *, created_by: str | None = None
                             ) -> list[dict[str, Any]]:
        return await self._read_op(audit.reconciliation(since, created_by))

    async def end_session(self, digest: str, *, expires_at: float, now: float) -> None:
        await self._op(sessions.end_session(digest, expires_at, now))

    async def session_ended(self, digest: str) -> bool:
        return await self._read_op(sessions.session_ended(digest))

"""A :class:`~receiver.store.protocol.Store` wrapper that scrubs secrets from everything written.

Whatever the backend, provider texts (errors, notes, log tails) and audit events pass
through the :class:`~receiver.obs.redaction.Redactor` before they reach a row, so a
provider that echoes an API key, a callback URL or a webhook secret cannot plant it
in the database, and from there in `status`, `list` or `submit --json`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from receiver.obs.redaction import Redactor
from receiver.store.models import AttemptRecord, Delivery, Event, FileRecord, Job, OutboxEvent, Outcome, SinkState
from receiver.store.protocol import Store
from receiver.store.summary import JobSummary, ProviderHour, ProviderStats
from submitter.bodies import Observation
from submitter.status import Status

__all__ = ["RedactingStore"]


class RedactingStore:
    """Delegates to `inner`; every text column and event is scrubbed on the way in. Every
    :class:`~receiver.store.protocol.Store` method is written out (no attribute forwarding), so
    mypy checks this wrapper against the interface like any backend."""

    def __init__(self, inner: Store, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor

    def _text(self, text: str | None, job_id: str, provider: str | None = None) -> str | None:
        return self.redactor.scrub(text, job_id=job_id, provider=provider)

    async def apply(
        self, job_id: str, observation: Observation, *, now: float, next_check_at: float | None,
        event: Event | None = None, expires: tuple[float, ...] = (), keep_events: int | None = None,
    ) -> Outcome:
        provider = event.provider if event is not None else None
        if observation.reason or observation.logs:
            observation = dataclasses.replace(
                observation,
                reason=self._text(observation.reason, job_id, provider),
                logs=self._text(observation.logs, job_id, provider),
            )
        if event is not None:
            body = self.redactor.scrub_bytes(event.body, job_id=job_id, provider=provider)
            # One pass over all of them: JSON keeps its shape (nothing redacted spans a quote).
            text = event.headers_json
            scrubbed = self._text(text, job_id, provider) or "{}"
            if body != event.body or scrubbed != text:  # else (nearly always) nothing to replace
                event = dataclasses.replace(event, body=body, headers=json.loads(scrubbed))
        return await self.inner.apply(job_id, observation, now=now, next_check_at=next_check_at, event=event,
                                      expires=expires, keep_events=keep_events)

    async def finish(
        self, job_id: str, status: Status, *, now: float, reason: str | None = None,
        only_from: frozenset[Status] | None = None,
    ) -> Outcome:
        return await self.inner.finish(job_id, status, now=now, reason=self._text(reason, job_id), only_from=only_from)

    async def defer(
        self, job_id: str, *, next_check_at: float, note: str | None, now: float, release_slot: bool = True
    ) -> None:
        await self.inner.defer(job_id, next_check_at=next_check_at, note=self._text(note, job_id), now=now,
                               release_slot=release_slot)

    async def record_submit(
        self, job_id: str, provider_job_id: str | None, polling_url: str | None, *, now: float,
        next_check_at: float | None, note: str | None = None,
    ) -> Outcome:
        return await self.inner.record_submit(job_id, provider_job_id, polling_url, now=now,
                                              next_check_at=next_check_at, note=self._text(note, job_id))

    # -- the rest carries no provider text: passed through as it is ----------------------

    def set_locator(self, locate: Callable[[str], str]) -> None:
        self.inner.set_locator(locate)

    def add_listener(self, listener: Callable[[], None]) -> None:
        self.inner.add_listener(listener)

    async def open(self, *, migrate: bool = True) -> None:
        await self.inner.open(migrate=migrate)

    async def close(self) -> None:
        await self.inner.close()

    async def create_job(self, job: Job) -> None:
        await self.inner.create_job(job)

    async def get_job(self, job_id: str) -> Job | None:
        return await self.inner.get_job(job_id)

    async def list_jobs(
        self, status: Status | None = None, limit: int = 100, *, provider: str | None = None,
        before: tuple[float, str] | None = None, created_by: str | None = None,
    ) -> list[Job]:
        return await self.inner.list_jobs(status, limit, provider=provider, before=before, created_by=created_by)

    async def create_job_once(
        self, job: Job, *, key: str, fingerprint: str, now: float, ttl: float
    ) -> tuple[Job, bool]:
        return await self.inner.create_job_once(job, key=key, fingerprint=fingerprint, now=now, ttl=ttl)

    async def job_summaries(
        self, status: Status | None = None, limit: int = 100, *, provider: str | None = None,
        before: tuple[float, str] | None = None, created_by: str | None = None,
    ) -> list[JobSummary]:
        return await self.inner.job_summaries(status, limit, provider=provider, before=before,
                                               created_by=created_by)

    async def get_summary(self, job_id: str) -> JobSummary | None:
        return await self.inner.get_summary(job_id)

    async def job_params(self, job_id: str) -> dict[str, Any] | None:
        return await self.inner.job_params(job_id)

    async def files(self, job_id: str) -> list[FileRecord]:
        return await self.inner.files(job_id)

    async def reserve_slot(self, job_id: str, *, cap: int, model_cap: int, now: float) -> bool:
        return await self.inner.reserve_slot(job_id, cap=cap, model_cap=model_cap, now=now)

    async def claim_due(
        self, owner: str, *, now: float, lease: float, limit: int, downloads: bool | None = None
    ) -> list[Job]:
        return await self.inner.claim_due(owner, now=now, lease=lease, limit=limit, downloads=downloads)

    async def mark_sending(self, job_id: str, sending: bool) -> None:
        await self.inner.mark_sending(job_id, sending)

    async def renew(self, job_id: str, owner: str, *, until: float) -> bool:
        return await self.inner.renew(job_id, owner, until=until)

    async def release(
        self, job_id: str, owner: str, *, expect: Status | None, next_check_at: float | None, polled: bool = False
    ) -> None:
        await self.inner.release(job_id, owner, expect=expect, next_check_at=next_check_at, polled=polled)

    async def note_repoll(self, job_id: str) -> None:
        await self.inner.note_repoll(job_id)

    async def set_note(self, job_id: str, note: str | None, *, now: float) -> None:
        await self.inner.set_note(job_id, note, now=now)

    async def store_file(
        self, job_id: str, n: int, *, path: str, size: int, sha256: str, content_type: str
    ) -> None:
        await self.inner.store_file(job_id, n, path=path, size=size, sha256=sha256, content_type=content_type)

    async def file_failed(self, job_id: str, n: int) -> None:
        await self.inner.file_failed(job_id, n)

    async def prune_events(self, before: float, *, limit: int = 5000) -> int:
        return await self.inner.prune_events(before, limit=limit)

    async def counts(self) -> dict[str, int]:
        return await self.inner.counts()

    async def provider_stats(
        self, since: tuple[float, ...], *, limit: int = 10000, quantiles: tuple[int, ...] = (50, 95),
        created_by: str | None = None,
    ) -> list[ProviderStats]:
        return await self.inner.provider_stats(since, limit=limit, quantiles=quantiles, created_by=created_by)

    async def provider_hourly(
        self, since: float, *, hours: int = 24, limit: int = 10000, quantiles: tuple[int, ...] = (50, 95),
        created_by: str | None = None,
    ) -> list[ProviderHour]:
        return await self.inner.provider_hourly(since, hours=hours, limit=limit, quantiles=quantiles,
                                                created_by=created_by)

    async def audit_events(self, job_id: str, *, limit: int = 100_000) -> list[dict[str, Any]]:
        return await self.inner.audit_events(job_id, limit=limit)

    async def audit_event(self, event_id: int) -> dict[str, Any] | None:
        return await self.inner.audit_event(event_id)

    async def reopen_for_retry(self, job_id: str, *, now: float, store_until: float) -> bool:
        return await self.inner.reopen_for_retry(job_id, now=now, store_until=store_until)

    async def reconciliation(self, since: float | None = None, *, created_by: str | None = None
                             ) -> list[dict[str, Any]]:
        return await self.inner.reconciliation(since, created_by=created_by)

    async def migrate(self, *, apply: bool = True) -> tuple[int, list[int]]:
        return await self.inner.migrate(apply=apply)

    async def events_after(
        self, after: int, *, limit: int = 500, job_id: str | None = None, types: frozenset[str] | None = None,
        created_by: str | None = None,
    ) -> list[OutboxEvent]:
        return await self.inner.events_after(after, limit=limit, job_id=job_id, types=types, created_by=created_by)

    async def last_seq(self) -> int:
        return await self.inner.last_seq()

    async def register_sink(self, name: str, kind: str, display: str, *, now: float) -> SinkState:
        return await self.inner.register_sink(name, kind, display, now=now)

    async def sinks(self) -> list[SinkState]:
        return await self.inner.sinks()

    async def disable_sink(self, name: str, reason: str, *, now: float) -> bool:
        return await self.inner.disable_sink(name, reason, now=now)

    async def enable_sink(self, name: str, *, now: float) -> bool:
        return await self.inner.enable_sink(name, now=now)

    async def fan_out(self, name: str, types: frozenset[str], *, now: float, limit: int = 1000) -> int:
        return await self.inner.fan_out(name, types, now=now, limit=limit)

    async def claim_deliveries(
        self, owner: str, *, sink: str, now: float, lease: float, limit: int
    ) -> list[tuple[Delivery, OutboxEvent]]:
        return await self.inner.claim_deliveries(owner, sink=sink, now=now, lease=lease, limit=limit)

    async def record_attempts(self, owner: str, records: list[AttemptRecord]) -> None:
        await self.inner.record_attempts(owner, records)

    async def deliveries(
        self, state: str | None = None, *, limit: int = 100, event_id: str | None = None
    ) -> list[Delivery]:
        return await self.inner.deliveries(state, limit=limit, event_id=event_id)

    async def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        return await self.inner.delivery_attempts(delivery_id)

    async def redeliver(
        self, event_id: str | None, *, failed: bool = False, sinks_for: dict[str, frozenset[str]], now: float
    ) -> int:
        return await self.inner.redeliver(event_id, failed=failed, sinks_for=sinks_for, now=now)

    async def prune_outbox(self, before: float, *, idempotent_before: float, limit: int = 5000) -> int:
        return await self.inner.prune_outbox(before, idempotent_before=idempotent_before, limit=limit)

    async def end_session(self, digest: str, *, expires_at: float, now: float) -> None:
        await self.inner.end_session(digest, expires_at=expires_at, now=now)

    async def session_ended(self, digest: str) -> bool:
        return await self.inner.session_ended(digest)

"""A :class:`~receiver.store.protocol.Store` wrapper that scrubs secrets from everything written.

Whatever the backend, provider texts (errors, notes, log tails) and audit events pass
through the :class:`~receiver.obs.redaction.Redactor` before they reach a row, so a
provider that echoes an API key, a callback URL or a webhook secret cannot plant it
in the database, and from there in `status`, `list` or `submit --json`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from receiver.obs.redaction import Redactor
from receiver.store.models import Event, Outcome
from receiver.store.protocol import Store
from submitter.bodies import Observation
from submitter.status import Status

__all__ = ["RedactingStore"]


class RedactingStore:
    """Delegates to `inner`; every text column and event is scrubbed on the way in."""

    def __init__(self, inner: Store, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor

    def __getattr__(self, name: str) -> Any:  # reads, leases and the rest carry no provider text
        return getattr(self.inner, name)

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

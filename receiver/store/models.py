"""The ledger's records and errors: what every backend reads and writes, and what callers receive."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from submitter.status import Status

__all__ = [
    "AttemptRecord",
    "Delivery",
    "Event",
    "FileRecord",
    "IdempotencyConflict",
    "Job",
    "OutboxEvent",
    "Outcome",
    "SinkState",
    "StoreUnavailable",
    "TaskMismatch",
    "iso",
    "public_view",
]


def iso(at: float | None) -> str | None:
    """A time as ISO 8601 in UTC (milliseconds), as every API and event shows it."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StoreUnavailable(Exception):
    """The database is locked, gone or full: answer 503 so the sender retries."""


class IdempotencyConflict(Exception):
    """An Idempotency-Key already names a request with another body."""

    def __init__(self, job_id: str) -> None:
        super().__init__("this Idempotency-Key was used with a different request body")
        self.job_id = job_id


class TaskMismatch(Exception):
    """An event names a different provider task than the job already has."""


@dataclass(frozen=True)
class Job:
    id: str
    provider: str
    model: str
    params: dict[str, Any]
    status: Status
    created_at: float
    deadline_at: float
    provider_job_id: str | None = None
    polling_url: str | None = None
    submitted_at: float | None = None
    updated_at: float | None = None
    next_check_at: float | None = None
    #: Earliest expiry among result URLs not yet downloaded.
    download_by: float | None = None
    #: When a verified callback last arrived.
    callback_at: float | None = None
    polls: int = 0
    submit_attempts: int = 0
    repolls: int = 0
    slot_held: bool = False
    #: A submit request is (or may be) on the wire: a crash now leaves the outcome unknown.
    sending: bool = False
    progress: float | None = None
    error: str | None = None
    note: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    #: How to submit: e.g. {"events": [...]} for Replicate's webhook filter.
    options: dict[str, Any] = field(default_factory=dict)
    #: The provider's log tail and output URLs as last reported (progress, not results).
    logs: str | None = None
    outputs: tuple[str, ...] = field(default=(), repr=False)
    #: The submitter's own data (`metadata` in the API), returned with every view and event.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The name of the API key that created the job (receiver/config/keys.py); None: the CLI or a test.
    created_by: str | None = None

    def view(self, files: list[FileRecord] | None = None, locate: Callable[[str], str] | None = None) -> dict[str, Any]:
        """The job as the API and every event show it (:func:`public_view`)."""
        return public_view(self, files, locate)

    def public(self) -> dict[str, Any]:
        """What the CLI shows: no URLs (they carry signatures), no lease internals."""
        return {
            "id": self.id,
            "provider": self.provider,
            "model": self.model,
            "status": str(self.status),
            "provider_job_id": self.provider_job_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "polls": self.polls,
            "error": self.error,
            "note": self.note,
        }


def public_view(
    job: Any, files: list[FileRecord] | None = None, locate: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """A job (a :class:`Job` or a listing's summary of one) as the API and every event show it: no URLs
    from the provider (they carry signatures), no lease internals; times in ISO 8601; `files` are the
    stored ones."""
    return {
        "id": job.id,
        "provider": job.provider,
        "model": job.model,
        "status": str(job.status),
        "error": job.error,
        "note": job.note,
        "metadata": job.metadata,
        "provider_job_id": job.provider_job_id,
        "created_by": job.created_by,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "submitted_at": iso(job.submitted_at),
        "files": [f.view(locate) for f in files or () if f.stored],
    }


@dataclass(frozen=True)
class FileRecord:
    job_id: str
    n: int
    url: str = field(repr=False)
    expires_at: float
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    attempts: int = 0

    @property
    def stored(self) -> bool:
        return self.path is not None

    def view(self, locate: Callable[[str], str] | None = None) -> dict[str, Any]:
        assert self.path is not None
        return {
            "n": self.n, "size": self.size, "sha256": self.sha256, "content_type": self.content_type,
            "location": locate(self.path) if locate else self.path, "url": f"/v1/jobs/{self.job_id}/files/{self.n}",
        }


@dataclass(frozen=True)
class Event:
    """One received callback, as kept for audit and replay (secrets removed)."""

    job_id: str
    provider: str
    dedup_key: str
    received_at: float
    headers: dict[str, str]
    body: bytes
    verdict: str

    @cached_property
    def headers_json(self) -> str:
        """The headers as the row keeps them (encoded once: redaction reads it, the insert writes it)."""
        return json.dumps(self.headers)


@dataclass(frozen=True)
class OutboxEvent:
    """One event of the durable outbox: written in the transaction that changed the job."""

    #: Per-database increasing, in commit order: SSE ids and resumption cursors.
    seq: int
    #: Stable id (`evt_...`): webhook-id, Nats-Msg-Id, the field `id` in Redis.
    id: str
    type: str
    job_id: str
    created_at: float
    #: The job's public view (plus `files` for job.stored): the JSON every surface sends.
    data: dict[str, Any]
    #: The job's `created_by` (not in the envelope: its `data` carries it), for filtering streams by key.
    created_by: str | None = None

    def envelope(self) -> dict[str, Any]:
        """The one JSON shape of an event, everywhere: webhooks, SSE, Redis, NATS."""
        return {"id": self.id, "seq": self.seq, "type": self.type, "created_at": iso(self.created_at),
                "data": self.data}

    def body(self) -> bytes:
        return json.dumps(self.envelope(), separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Delivery:
    """One event owed to one sink, with its retry state."""

    id: int
    sink: str
    seq: int
    event_id: str
    job_id: str
    #: "pending", "delivered" or "dead".
    state: str
    attempts: int
    next_at: float | None
    created_at: float
    delivered_at: float | None = None
    last_code: int | None = None
    last_error: str | None = None
    event_type: str | None = None


@dataclass(frozen=True)
class SinkState:
    name: str
    kind: str
    display: str
    #: The outbox position up to which deliveries were created for this sink.
    after_seq: int
    disabled_at: float | None = None
    disabled_reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What applying an observation did."""

    duplicate: bool = False  # the event was seen before: nothing changed
    changed: bool = False  # the job's status moved
    status: Status | None = None  # the job's status afterwards
    found: bool = True
    recorded: bool = False  # the event was kept in the audit log (not over a cap, job not finished)


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt made, and the delivery's state after it
    (for :meth:`~receiver.store.protocol.Store.record_attempts`)."""

    delivery_id: int
    seq: int
    at: float
    code: int | None
    latency_ms: float
    error: str | None
    #: "pending" (with `next_at`), "delivered" or "dead".
    state: str
    next_at: float | None = None

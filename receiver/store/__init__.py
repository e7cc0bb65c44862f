"""The ledger: jobs, received events and result files.

:class:`Store` is the interface every backend implements; the contract tests
in ``tests/test_store.py`` run against each one. Status changes are
conditional updates derived from :mod:`submitter.status`, deduplication is a
unique key, and work is claimed with leases, so several processes can share
one database without doing anything twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

from submitter.bodies import Observation
from submitter.status import Status

__all__ = [
    "Delivery",
    "Event",
    "FileRecord",
    "IdempotencyConflict",
    "Job",
    "OutboxEvent",
    "Outcome",
    "SinkState",
    "Store",
    "StoreUnavailable",
    "TaskMismatch",
    "is_postgres_url",
    "open_store",
    "schema_behind",
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

    def view(self, files: list[FileRecord] | None = None, locate: Callable[[str], str] | None = None) -> dict[str, Any]:
        """The job as the API and every event show it: no URLs from the provider (they carry
        signatures), no lease internals; times in ISO 8601; `files` are the stored ones."""
        return {
            "id": self.id,
            "provider": self.provider,
            "model": self.model,
            "status": str(self.status),
            "error": self.error,
            "note": self.note,
            "metadata": self.metadata,
            "provider_job_id": self.provider_job_id,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "submitted_at": iso(self.submitted_at),
            "files": [f.view(locate) for f in files or () if f.stored],
        }

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


class Store(Protocol):
    async def open(self, *, migrate: bool = True) -> None:
        """Connect and (with `migrate`) bring the schema up to date; StoreUnavailable if it cannot."""
        ...
    async def close(self) -> None: ...

    async def create_job(self, job: Job) -> None:
        """Insert a new job; its lease fields are stored as given, so the creator can hold it from the start."""
        ...
    async def get_job(self, job_id: str) -> Job | None: ...
    async def list_jobs(self, status: Status | None = None, limit: int = 100) -> list[Job]: ...
    async def files(self, job_id: str) -> list[FileRecord]: ...

    async def reserve_slot(self, job_id: str, *, cap: int, model_cap: int, now: float) -> bool:
        """Atomically hold one of the provider's active-job slots for a queued job."""
        ...

    async def record_submit(
        self, job_id: str, provider_job_id: str | None, polling_url: str | None, *, now: float,
        next_check_at: float | None, note: str | None = None,
    ) -> Outcome:
        """The provider accepted (or may have accepted) the job: queued -> submitted."""
        ...

    async def defer(
        self, job_id: str, *, next_check_at: float, note: str | None, now: float, release_slot: bool = True
    ) -> None:
        """Try a queued job again later, giving back its slot if it held one (`release_slot`)."""
        ...

    async def apply(
        self, job_id: str, observation: Observation, *, now: float, next_check_at: float | None,
        event: Event | None = None, expires: tuple[float, ...] = (), keep_events: int | None = None,
    ) -> Outcome:
        """Record an event (if any, deduplicated) and move the job per the observation, in one transaction.

        A finished job records and changes nothing. With `keep_events`, a job that already has that
        many events is still moved, but the event is not kept (nor deduplicated: the state machine
        makes a repeat harmless). Raises TaskMismatch, changing nothing, if the observation names
        another provider task."""
        ...

    async def finish(
        self, job_id: str, status: Status, *, now: float, reason: str | None = None,
        only_from: frozenset[Status] | None = None,
    ) -> Outcome:
        """Move a job to a terminal status (stored, failed, expired...) if the state machine allows,
        and, with `only_from`, only from one of those statuses."""
        ...

    async def claim_due(
        self, owner: str, *, now: float, lease: float, limit: int, downloads: bool | None = None
    ) -> list[Job]:
        """Lease jobs whose next check is due: downloads first, earliest URL expiry first.

        `downloads`: True for succeeded jobs only (their files are due), False for every
        other job (submits, polls, deadlines), None for both."""
        ...

    async def claim(self, job_id: str, owner: str, *, now: float, lease: float) -> Job | None: ...

    async def mark_sending(self, job_id: str, sending: bool) -> None:
        """Record that a submit request is about to go out (True) or was refused (False)."""
        ...

    async def renew(self, job_id: str, owner: str, *, until: float) -> bool:
        """Extend a lease we hold; False if it is no longer ours."""
        ...

    async def release(
        self, job_id: str, owner: str, *, expect: Status | None, next_check_at: float | None, polled: bool = False
    ) -> None:
        """Give up a lease. If the job is still in `expect`, schedule its next check;
        if it finished or moved on meanwhile (or `expect` is None), keep its schedule."""
        ...

    async def note_repoll(self, job_id: str) -> None: ...
    async def set_note(self, job_id: str, note: str | None, *, now: float) -> None:
        """Replace the job's note (why it waits: e.g. its downloads keep failing); None clears it."""
        ...
    async def store_file(
        self, job_id: str, n: int, *, path: str, size: int, sha256: str, content_type: str
    ) -> None: ...
    async def file_failed(self, job_id: str, n: int) -> None: ...
    async def prune_events(self, before: float, *, limit: int = 5000) -> int:
        """Delete up to `limit` audit events received before `before`; returns how many."""
        ...

    async def count_events(self, job_id: str) -> int: ...
    async def counts(self) -> dict[str, int]: ...
    async def jobs_since(self, since: float, *, limit: int = 10000) -> list[Job]:
        """Jobs created at or after `since`, newest first, at most `limit` (the UI's provider panel)."""
        ...

    async def audit_events(self, job_id: str, *, limit: int = 100_000) -> list[dict[str, Any]]:
        """The job's received callbacks (secrets removed), oldest first, at most `limit`, each a dict with
        its audit `id` (for `fluxhook replay`), `received_at`, `headers`, `body` (bytes), `verdict`, `dedup_key`."""
        ...
    async def audit_event(self, event_id: int) -> dict[str, Any] | None:
        """One received callback by its audit id (as :meth:`audit_events` shows it), or None."""
        ...
    async def reopen_for_retry(self, job_id: str, *, now: float, store_until: float) -> bool:
        """The one sanctioned way out of a terminal status: a job that ended `failed`/`expired` in
        our download path (it has a provider task and unstored result files) goes back to
        `succeeded`, due now, its download window reaching `store_until`. No outbox event; False
        (changing nothing) for any other job."""
        ...
    async def reconciliation(self, since: float | None = None) -> list[dict[str, Any]]:
        """One row per job created at or after `since`: status, provider task, callback_at, polls,
        error, file counts (all / stored), job.stored outbox events and kept callbacks."""
        ...

    async def migrate(self, *, apply: bool = True) -> tuple[int, list[int]]:
        """Bring the schema up to date (`open` does too): (version before, versions applied); without
        `apply`, only report the versions pending."""
        ...


def schema_behind(where: str, before: int, pending: list[int]) -> str:
    """What to tell someone whose database at `where` still has migrations `pending`."""
    return (f"{where}: schema version {before}, {len(pending)} migration(s) pending"
            f" ({', '.join(map(str, pending))}): run `fluxhook migrate`")


def is_postgres_url(db: str) -> bool:
    """Whether FLUXHOOK_DB names a PostgreSQL database (else it is a SQLite file)."""
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str, *, pool_size: int = 10) -> Store:
    """The backend `db` names (not yet opened): PostgreSQL for a postgresql:// or postgres:// URL,
    else a SQLite file at that path."""
    if is_postgres_url(db):
        from receiver.store.postgres import PostgresStore

        return PostgresStore(db, pool_size=pool_size)
    from receiver.store.sqlite import SQLiteStore

    return SQLiteStore(db)

"""The :class:`Store` interface every backend implements; the contract tests in
``tests/receiver/store/test_store.py`` run against each one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from receiver.store.models import AttemptRecord, Delivery, Event, FileRecord, Job, OutboxEvent, Outcome, SinkState
from receiver.store.summary import JobSummary, ProviderHour, ProviderStats
from submitter.bodies import Observation
from submitter.status import Status

__all__ = ["Store"]


class Store(Protocol):
    """Every operation callers use; :class:`~receiver.store.redacting.RedactingStore` implements each
    one explicitly, and mypy checks both backends against it (tests/receiver/store/test_store.py runs each)."""

    def set_locator(self, locate: Callable[[str], str]) -> None:
        """Where a stored file's path lives, as events show it (the result store's `location`)."""
        ...

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every operation of this store that changed a job's status (and so wrote
        an outbox event)."""
        ...

    async def open(self, *, migrate: bool = True) -> None:
        """Connect and (with `migrate`) bring the schema up to date; StoreUnavailable if it cannot."""
        ...
    async def close(self) -> None: ...

    async def create_job(self, job: Job) -> None:
        """Insert a new job; its lease fields are stored as given, so the creator can hold it from the start."""
        ...
    async def get_job(self, job_id: str) -> Job | None: ...
    async def list_jobs(
        self, status: Status | None = None, limit: int = 100, *, provider: str | None = None,
        before: tuple[float, str] | None = None, created_by: str | None = None,
    ) -> list[Job]:
        """Newest first by (created_at, id); `before` is the last row of the previous page (keyset paging);
        with `created_by`, only the jobs that API key (by name) created."""
        ...
    async def create_job_once(
        self, job: Job, *, key: str, fingerprint: str, now: float, ttl: float
    ) -> tuple[Job, bool]:
        """Create `job` under an idempotency key, or find the job the key already names: (job, created).
        IdempotencyConflict if the key came with another request body."""
        ...
    async def job_summaries(
        self, status: Status | None = None, limit: int = 100, *, provider: str | None = None,
        before: tuple[float, str] | None = None, created_by: str | None = None,
    ) -> list[JobSummary]:
        """As :meth:`list_jobs` (the same filters, order and paging), each job's summary: never its params,
        its prompt cut by the database (receiver/store/summary.py). What every listing that serves reads."""
        ...
    async def get_summary(self, job_id: str) -> JobSummary | None:
        """One job's summary (as :meth:`job_summaries` has it), or None."""
        ...
    async def job_params(self, job_id: str) -> dict[str, Any] | None:
        """The job's params as they were given: its large inputs (receiver/store/inputs.py), which
        :meth:`get_job` shows as references, back in place: what the submit request is built from."""
        ...
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

    async def counts(self) -> dict[str, int]: ...
    async def provider_stats(
        self, since: tuple[float, ...], *, limit: int = 10000, quantiles: tuple[int, ...] = (50, 95),
        created_by: str | None = None,
    ) -> list[ProviderStats]:
        """The UI's provider panel, computed by the database: for each window start in `since`, per provider
        with jobs created since then, its jobs by status, callbacks, jobs rescued by polling and the
        nearest-rank `quantiles` of seconds from created and from submitted to stored; counting only the
        newest `limit` jobs created since the earliest start."""
        ...

    async def provider_hourly(
        self, since: float, *, hours: int = 24, limit: int = 10000, quantiles: tuple[int, ...] = (50, 95),
        created_by: str | None = None,
    ) -> list[ProviderHour]:
        """The provider panel's charts, computed by the database: per provider and hour with jobs of the
        `hours` hours from `since`, jobs created, callbacks, jobs rescued by polling, failures and the
        nearest-rank `quantiles` of seconds from created to stored; counting only the newest `limit` jobs."""
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
    async def reconciliation(self, since: float | None = None, *, created_by: str | None = None
                             ) -> list[dict[str, Any]]:
        """One row per job created at or after `since` (by the API key `created_by` names, if given): status,
        provider task, callback_at, polls, error, file counts (all / stored), job.stored outbox events and
        kept callbacks."""
        ...

    async def migrate(self, *, apply: bool = True) -> tuple[int, list[int]]:
        """Bring the schema up to date (`open` does too): (version before, versions applied); without
        `apply`, only report the versions pending."""
        ...

    # -- the outbox and its deliveries (receiver/store/sql/outbox.py, sink_deliveries.py) -----------------------------

    async def events_after(
        self, after: int, *, limit: int = 500, job_id: str | None = None, types: frozenset[str] | None = None,
        created_by: str | None = None,
    ) -> list[OutboxEvent]:
        """Outbox events after position `after`, in order (of one job, of some types, of the jobs one API key
        created)."""
        ...
    async def last_seq(self) -> int:
        """The newest outbox position (0 when empty)."""
        ...
    async def register_sink(self, name: str, kind: str, display: str, *, now: float) -> SinkState:
        """Make a sink known; a new one is owed the events from now on."""
        ...
    async def sinks(self) -> list[SinkState]: ...
    async def disable_sink(self, name: str, reason: str, *, now: float) -> bool: ...
    async def enable_sink(self, name: str, *, now: float) -> bool:
        """Enable a sink again; its pending deliveries are due at once. False if it does not exist."""
        ...
    async def fan_out(self, name: str, types: frozenset[str], *, now: float, limit: int = 1000) -> int:
        """Create the sink's deliveries for the events after its position; returns how many events passed."""
        ...
    async def claim_deliveries(
        self, owner: str, *, sink: str, now: float, lease: float, limit: int
    ) -> list[tuple[Delivery, OutboxEvent]]:
        """Lease due deliveries to `sink`, at most one per job, oldest due first."""
        ...
    async def record_attempts(self, owner: str, records: list[AttemptRecord]) -> None:
        """A batch of attempts, and each delivery's new state, in one transaction."""
        ...
    async def deliveries(
        self, state: str | None = None, *, limit: int = 100, event_id: str | None = None
    ) -> list[Delivery]: ...
    async def delivery_attempts(self, delivery_id: int) -> list[dict[str, Any]]: ...
    async def redeliver(
        self, event_id: str | None, *, failed: bool = False, sinks_for: dict[str, frozenset[str]], now: float
    ) -> int:
        """Make deliveries due again (one event's, and/or every dead one); -1 if `event_id` is unknown."""
        ...
    async def prune_outbox(self, before: float, *, idempotent_before: float, limit: int = 5000) -> int:
        """Delete old events with their deliveries and attempts, and old idempotency keys."""
        ...

    # -- ended UI sessions (receiver/store/sql/sessions.py) ---------------------------------------------------------

    async def end_session(self, digest: str, *, expires_at: float, now: float) -> None:
        """Refuse the session cookie whose SHA-256 is `digest` from now on (it expires by itself at `expires_at`)."""
        ...
    async def session_ended(self, digest: str) -> bool:
        """Whether the session cookie with this digest was ended by a logout."""
        ...

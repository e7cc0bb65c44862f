"""The ledger's schema, statements and transaction logic, written once for every backend.

Each store operation is a generator: it yields :class:`Query` (and :class:`Lock`)
steps and is sent each step's result, so the same logic runs on SQLite (all steps
on the store's thread: one hand-off per transaction) and on PostgreSQL (each step
awaited on a pooled connection). Statements use `?` placeholders and a few tokens
(`{skip_locked}`, `{ids_in}`…`{ids_end}`); a backend's
:class:`~receiver.store.sql.plumbing.SqlDialect` compiles them, numbering only the `?` that are
parameters (never one inside a string literal, a quoted name or a comment). Status changes are
conditional updates derived from :mod:`submitter.status`; nothing of the state
machine is written anywhere else.

One module per concern: plumbing (steps, dialects), schema (migrations), rows (records and status
lists), jobs, inputs (large params values, stored once), listing (summaries, the provider panel), hourly (its charts),
transitions (status changes), leases, outbox, sink_deliveries, audit, sessions (ended UI sessions). Modules import each
other, never this package; its names are re-exported here for callers (the CLI, tests, bench).
"""

from __future__ import annotations

from receiver.store.sql.audit import audit_event, audit_events, prune_events, reconciliation
from receiver.store.sql.hourly import provider_hourly
from receiver.store.sql.inputs import job_params, store_inputs
from receiver.store.sql.jobs import (
    counts,
    create_job,
    create_job_once,
    file_failed,
    files,
    get_job,
    list_jobs,
    note_repoll,
    ping,
    set_note,
    store_file,
)
from receiver.store.sql.leases import claim_due, mark_sending, release, renew
from receiver.store.sql.listing import get_summary, job_summaries, provider_stats
from receiver.store.sql.outbox import EVENT_OF, emit, events_after, last_seq, new_event_id, prune_outbox
from receiver.store.sql.plumbing import Lock, Op, Query, SqlDialect, Step, UniqueViolation
from receiver.store.sql.rows import row_to_file, row_to_job
from receiver.store.sql.schema import LATEST, MIGRATIONS, migrate
from receiver.store.sql.sessions import end_session, session_ended
from receiver.store.sql.sink_deliveries import (
    claim_deliveries,
    deliveries,
    delivery_attempts,
    enable_sink,
    fan_out,
    record_attempts,
    redeliver,
    register_sink,
    set_sink_disabled,
    sinks,
)
from receiver.store.sql.transitions import apply, defer, finish, record_submit, reopen_for_retry, reserve_slot

__all__ = [
    "EVENT_OF", "LATEST", "MIGRATIONS", "Lock", "Op", "Query", "SqlDialect", "Step", "UniqueViolation", "apply",
    "audit_event", "audit_events", "claim_deliveries", "claim_due", "counts", "create_job", "create_job_once",
    "defer", "deliveries", "delivery_attempts", "emit", "enable_sink", "end_session", "events_after", "fan_out",
    "file_failed", "files", "finish", "get_job", "get_summary", "job_params", "job_summaries", "last_seq",
    "list_jobs", "mark_sending", "migrate", "new_event_id", "note_repoll", "ping", "provider_hourly",
    "provider_stats", "prune_events",
    "prune_outbox", "reconciliation", "record_attempts", "record_submit", "redeliver", "register_sink", "release",
    "renew", "reopen_for_retry", "reserve_slot", "row_to_file", "row_to_job", "session_ended", "set_note",
    "set_sink_disabled", "sinks", "store_file", "store_inputs",
]

"""The ledger's schema, statements and transaction logic, written once for every backend.

Each store operation is a generator: it yields :class:`Query` (and :class:`Lock`)
steps and is sent each step's result, so the same logic runs on SQLite (all steps
on the store's thread: one hand-off per transaction) and on PostgreSQL (each step
awaited on a pooled connection). Statements use `?` placeholders and a few tokens
(`{skip_locked}`, `{ids_in}`…`{ids_end}`); a backend's :class:`Dialect` compiles them. Status changes are
conditional updates derived from :mod:`submitter.status`; nothing of the state
machine is written anywhere else.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from receiver.config.integrations import EVENT_TYPES
from receiver.store.models import Event, FileRecord, IdempotencyConflict, Job, Outcome, TaskMismatch
from submitter.bodies import Observation
from submitter.status import ACTIVE, TERMINAL, Status, can_follow, observed_predecessors, predecessors

__all__ = ["MIGRATIONS", "Dialect", "Lock", "Op", "Query", "UniqueViolation"]

T = TypeVar("T")


@dataclass(frozen=True)
class Query:
    sql: str
    args: tuple[Any, ...] = ()
    #: "count": rows changed; "one": first row or None; "all": rows; "many": run once per row of `args`
    #: (a tuple of tuples), answering None on every backend (PostgreSQL's executemany counts nothing).
    want: Literal["count", "one", "all", "many"] = "count"


@dataclass(frozen=True)
class Lock:
    """Serialise this transaction with every other one taking the same named lock (PostgreSQL's
    advisory locks; SQLite's write transactions are serial already)."""

    name: str


class UniqueViolation(Exception):
    """A backend's unique-constraint error, thrown back into the operation that caused it."""


Step = Query | Lock
Op = Generator[Step, Any, T]


@dataclass(frozen=True)
class Dialect:
    name: str
    #: Placeholder for the n-th parameter (1-based): "?" or "$n".
    placeholder: str = "?"
    #: Row locking for claim subqueries ("" where writers are serial anyway).
    skip_locked: str = ""
    #: Locking the row a transaction reads before it writes it (READ COMMITTED would let another
    #: transaction commit in between); "" where writers are serial anyway.
    for_update: str = ""
    #: How a claim names the rows its subquery picked: `id IN (…)`, or on PostgreSQL
    #: `id = ANY(ARRAY(…))`, whose generic plan still looks rows up by key (an `IN` subquery's
    #: generic plan, estimated without the parameters, is a full scan and hash join).
    ids_in: tuple[str, str] = ("id IN (", ")")
    #: DDL spellings that differ from SQLite's: (SQLite's, ours) pairs.
    types: tuple[tuple[str, str], ...] = ()
    #: Statements compiled so far (a few dozen: they are this module's literals; bounded all the same).
    _compiled: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def compile(self, sql: str) -> str:
        compiled = self._compiled.get(sql)
        if compiled is None:
            compiled = _compile(self, sql)
            if len(self._compiled) < 1024:
                self._compiled[sql] = compiled
        return compiled

    def ddl(self, sql: str) -> str:
        for old, new in self.types:
            sql = re.sub(rf"\b{re.escape(old)}\b", new, sql)
        return sql


def _compile(dialect: Dialect, sql: str) -> str:
    sql = sql.replace("{skip_locked}", dialect.skip_locked).replace("{for_update}", dialect.for_update)
    sql = sql.replace("{ids_in}", dialect.ids_in[0]).replace("{ids_end}", dialect.ids_in[1])
    if dialect.placeholder == "?":
        return sql
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: dialect.placeholder.replace("n", str(next(counter))), sql)


#: Numbered schema steps; each runs once, in a transaction with its record. Written in SQLite's
#: types; :meth:`Dialect.ddl` renames the few that differ.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial",
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            params TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            deadline_at REAL NOT NULL,
            provider_job_id TEXT,
            polling_url TEXT,
            submitted_at REAL,
            updated_at REAL,
            next_check_at REAL,
            download_by REAL,
            callback_at REAL,
            polls INTEGER NOT NULL DEFAULT 0,
            submit_attempts INTEGER NOT NULL DEFAULT 0,
            repolls INTEGER NOT NULL DEFAULT 0,
            slot_held INTEGER NOT NULL DEFAULT 0,
            progress REAL,
            error TEXT,
            note TEXT,
            lease_owner TEXT,
            lease_until REAL
        );
        CREATE INDEX jobs_due ON jobs (next_check_at) WHERE next_check_at IS NOT NULL;
        CREATE INDEX jobs_active ON jobs (provider, status);
        CREATE UNIQUE INDEX jobs_provider_job ON jobs (provider, provider_job_id)
            WHERE provider_job_id IS NOT NULL;
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            dedup_key TEXT NOT NULL UNIQUE,
            received_at REAL NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL,
            verdict TEXT NOT NULL
        );
        CREATE INDEX events_job ON events (job_id);
        CREATE TABLE files (
            job_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            url TEXT NOT NULL,
            expires_at REAL NOT NULL,
            path TEXT,
            size INTEGER,
            sha256 TEXT,
            content_type TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (job_id, n)
        );
        """,
    ),
    (
        2,
        "submit options, progress logs and outputs",
        """
        ALTER TABLE jobs ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE jobs ADD COLUMN logs TEXT;
        ALTER TABLE jobs ADD COLUMN outputs TEXT
        """,
    ),
    (3, "events by age, for retention", "CREATE INDEX events_received ON events (received_at)"),
    (4, "submit requests in flight", "ALTER TABLE jobs ADD COLUMN sending INTEGER NOT NULL DEFAULT 0"),
    (
        5,
        "event outbox, sinks, deliveries, idempotency keys, job metadata",
        """
        ALTER TABLE jobs ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
        CREATE INDEX jobs_created ON jobs (created_at, id);
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            job_id TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at REAL NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX outbox_job ON outbox (job_id, seq);
        CREATE INDEX outbox_created ON outbox (created_at);
        CREATE TABLE sinks (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            display TEXT NOT NULL,
            after_seq BIGINT NOT NULL,
            created_at REAL NOT NULL,
            disabled_at REAL,
            disabled_reason TEXT
        );
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            seq BIGINT NOT NULL,
            job_id TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL,
            created_at REAL NOT NULL,
            delivered_at REAL,
            last_code INTEGER,
            last_error TEXT,
            lease_owner TEXT,
            lease_until REAL,
            UNIQUE (sink, seq)
        );
        CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';
        CREATE INDEX deliveries_order ON deliveries (sink, job_id, seq) WHERE state = 'pending';
        CREATE INDEX deliveries_seq ON deliveries (seq);
        CREATE TABLE delivery_attempts (
            delivery_id BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            at REAL NOT NULL,
            code INTEGER,
            latency_ms REAL NOT NULL,
            error TEXT
        );
        CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
        CREATE INDEX delivery_attempts_seq ON delivery_attempts (seq);
        CREATE TABLE idempotency (
            key TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            job_id TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX idempotency_created ON idempotency (created_at)
        """,
    ),
]
LATEST = MIGRATIONS[-1][0]

_JOB_FIELDS = frozenset(Job.__dataclass_fields__)
_TERMINAL_SQL = ",".join(f"'{s}'" for s in sorted(TERMINAL))
_ACTIVE_SQL = ",".join(f"'{s}'" for s in sorted(ACTIVE))


def _in(statuses: frozenset[Status]) -> str:
    return ",".join(f"'{s}'" for s in sorted(statuses)) or "NULL"


#: Every status name a statement spells comes from submitter.status: its sets, its transition rules.
_QUEUED = f"'{Status.QUEUED}'"
_SUCCEEDED = f"'{Status.SUCCEEDED}'"
#: Where a submit answer moves a job from (queued).
_SUBMIT_FROM = _in(predecessors(Status.SUBMITTED))
#: What our download path may end a succeeded job in, short of storing it (failed, expired): the
#: statuses `fluxhook retry` reopens.
_GAVE_UP = _in(frozenset(s for s in Status if can_follow(Status.SUCCEEDED, s)) - {Status.STORED})


def _min(a: float | None, b: float | None) -> float | None:
    """Like SQLite's two-argument MIN: None if either is None."""
    return None if a is None or b is None else min(a, b)


def row_to_job(row: Any) -> Job:
    data = {k: row[k] for k in row.keys() if k in _JOB_FIELDS}
    data["params"] = json.loads(data["params"])
    data["options"] = json.loads(data["options"])
    data["outputs"] = tuple(json.loads(data["outputs"])) if data["outputs"] else ()
    data["metadata"] = json.loads(data["metadata"])
    data["status"] = Status(data["status"])
    data["slot_held"] = bool(data["slot_held"])
    data["sending"] = bool(data["sending"])
    return Job(**data)


def row_to_file(row: Any) -> FileRecord:
    return FileRecord(**{k: row[k] for k in row.keys()})


# -- schema -------------------------------------------------------------------------

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)


def migrate(dialect: Dialect, now: float, *, apply: bool = True) -> Op[tuple[int, list[int]]]:
    """Bring the schema up to date (or, without `apply`, only look): (version before, versions applied)."""
    yield Lock("fluxhook-migrate")
    yield Query(dialect.ddl(MIGRATIONS_TABLE))
    done = {row[0] for row in (yield Query("SELECT version FROM schema_migrations", want="all"))}
    before = max(done, default=0)
    pending = [m for m in MIGRATIONS if m[0] not in done]
    if not apply:
        return before, [v for v, _, _ in pending]
    for version, name, sql in pending:
        for statement in filter(str.strip, dialect.ddl(sql).split(";")):
            yield Query(statement)
        yield Query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, now))
    return before, [v for v, _, _ in pending]


# -- jobs -------------------------------------------------------------------------------

def create_job(job: Job) -> Op[None]:
    yield Query(
        "INSERT INTO jobs (id, provider, model, params, options, metadata, status, created_at, deadline_at,"
        " updated_at, next_check_at, lease_owner, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job.id, job.provider, job.model, json.dumps(job.params), json.dumps(job.options), json.dumps(job.metadata),
         str(job.status), job.created_at, job.deadline_at, job.created_at, job.next_check_at, job.lease_owner,
         job.lease_until),
    )


def create_job_once(job: Job, key: str, fingerprint: str, now: float, ttl: float) -> Op[tuple[str, bool]]:
    """Create `job` under an idempotency key, or find the job the key already names:
    (job id, created). IdempotencyConflict if the key came with another request body."""
    for _ in range(2):
        row = yield Query("SELECT fingerprint, job_id, created_at FROM idempotency WHERE key = ?", (key,), "one")
        if row is not None and row[2] < now - ttl:
            yield Query("DELETE FROM idempotency WHERE key = ? AND created_at = ?", (key, row[2]))
            row = None
        if row is not None:
            if row[0] != fingerprint:
                raise IdempotencyConflict(row[1])
            return row[1], False
        # A concurrent request with the same key waits here for the other's commit (PostgreSQL),
        # then inserts nothing and reads the winner's row on the second round.
        inserted = yield Query(
            "INSERT INTO idempotency (key, fingerprint, job_id, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (key) DO NOTHING",
            (key, fingerprint, job.id, now),
        )
        if inserted:
            yield from create_job(job)
            return job.id, True
    raise IdempotencyConflict(job.id)  # the key vanished and reappeared twice: let the client retry


def get_job(job_id: str) -> Op[Job | None]:
    row = yield Query("SELECT * FROM jobs WHERE id = ?", (job_id,), "one")
    return row_to_job(row) if row is not None else None


def list_jobs(
    status: Status | None, limit: int, provider: str | None = None, before: tuple[float, str] | None = None
) -> Op[list[Job]]:
    """Newest first by (created_at, id); `before` is the last row of the previous page (keyset paging)."""
    where, args = [], []
    if status is not None:
        where.append("status = ?")
        args.append(str(status))
    if provider is not None:
        where.append("provider = ?")
        args.append(provider)
    if before is not None:
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args += [before[0], before[0], before[1]]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = yield Query(f"SELECT * FROM jobs{clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                       (*args, limit), "all")
    return [row_to_job(r) for r in rows]


def files(job_id: str) -> Op[list[FileRecord]]:
    rows = yield Query("SELECT * FROM files WHERE job_id = ? ORDER BY n", (job_id,), "all")
    return [row_to_file(r) for r in rows]


def _status(job_id: str) -> Op[Status | None]:
    row = yield Query("SELECT status FROM jobs WHERE id = ?", (job_id,), "one")
    return Status(row[0]) if row is not None else None


def reserve_slot(job_id: str, cap: int, model_cap: int, now: float) -> Op[bool]:
    # One statement, and reservations serialised: the counts and the reservation cannot interleave.
    yield Lock("fluxhook-slots")
    active = f"(o.status IN ({_ACTIVE_SQL}) OR (o.status = {_QUEUED} AND o.slot_held = 1))"
    changed = yield Query(
        f"""UPDATE jobs SET slot_held = 1, submit_attempts = submit_attempts + 1, updated_at = ?
        WHERE id = ? AND status = {_QUEUED} AND slot_held = 0
          AND (SELECT COUNT(*) FROM jobs AS o WHERE o.provider = jobs.provider AND {active}) < ?
          AND (SELECT COUNT(*) FROM jobs AS o WHERE o.provider = jobs.provider
               AND o.model = jobs.model AND {active}) < ?""",
        (now, job_id, cap, model_cap),
    )
    return bool(changed == 1)


def record_submit(
    job_id: str, provider_job_id: str | None, polling_url: str | None, now: float, next_check_at: float | None,
    note: str | None,
) -> Op[Outcome]:
    before = yield Query("SELECT provider_job_id, next_check_at FROM jobs WHERE id = ?", (job_id,), "one")
    # The ids are kept even when a callback already moved the job on (it raced this answer).
    yield Query(
        "UPDATE jobs SET provider_job_id = COALESCE(provider_job_id, ?),"
        " polling_url = COALESCE(polling_url, ?), submitted_at = COALESCE(submitted_at, ?),"
        " note = COALESCE(?, note), slot_held = 0, sending = 0, updated_at = ? WHERE id = ?",
        (provider_job_id, polling_url, now, note, now, job_id),
    )
    changed = (yield Query(
        f"UPDATE jobs SET status = ?, next_check_at = ? WHERE id = ? AND status IN ({_SUBMIT_FROM})",
        (str(Status.SUBMITTED), next_check_at, job_id),
    )) == 1
    if not changed and before is not None and before[0] is None and provider_job_id is not None:
        # The answer comes after the job was reconciled as "outcome unknown" (waiting for the
        # deadline): now that it can be polled, poll it on the normal schedule.
        current = before[1] if before[1] is not None else next_check_at
        yield Query(
            f"UPDATE jobs SET next_check_at = ? WHERE id = ? AND status IN ({_ACTIVE_SQL})",
            (_min(current, next_check_at), job_id),
        )
    if changed:
        yield from emit(job_id, Status.SUBMITTED, now)
    status = yield from _status(job_id)
    return Outcome(changed=changed, status=status, found=status is not None)


def defer(job_id: str, next_check_at: float, note: str | None, now: float, release_slot: bool) -> Op[None]:
    yield Query(
        "UPDATE jobs SET slot_held = CASE WHEN ? = 1 THEN 0 ELSE slot_held END, sending = 0, next_check_at = ?,"
        f" note = ?, updated_at = ? WHERE id = ? AND status = {_QUEUED}",
        (int(release_slot), next_check_at, note, now, job_id),
    )


def _update_download_by(job_id: str) -> Op[None]:
    yield Query(
        "UPDATE jobs SET download_by = (SELECT MIN(expires_at) FROM files WHERE job_id = ? AND path IS NULL)"
        " WHERE id = ?",
        (job_id, job_id),
    )


def apply(
    job_id: str, observation: Observation, now: float, next_check_at: float | None, event: Event | None,
    expires: tuple[float, ...], keep_events: int | None,
) -> Op[Outcome]:
    # One round trip: the job and (for the audit cap) how many events it keeps already.
    row = yield Query(
        "SELECT status, provider_job_id, deadline_at,"
        " CASE WHEN ? = 1 THEN (SELECT COUNT(*) FROM events WHERE job_id = ?) ELSE 0 END"
        " FROM jobs WHERE id = ? {for_update}",
        (int(event is not None and keep_events is not None), job_id, job_id), "one",
    )
    if row is None:
        return Outcome(found=False)
    current, task, deadline, kept = Status(row[0]), row[1], row[2], row[3]
    if task and observation.provider_job_id and observation.provider_job_id != task:
        raise TaskMismatch(f"event names provider task {observation.provider_job_id!r}, the job has another")
    if current in TERMINAL:
        return Outcome(status=current)  # finished: nothing to change, nothing more to keep
    if event is not None and keep_events is not None and kept >= keep_events:
        event = None  # the audit cap for this job is reached: apply, but keep no more
    recorded = event is not None
    if event is not None:
        inserted = yield Query(
            "INSERT INTO events (job_id, provider, dedup_key, received_at, headers, body, verdict)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING",
            (event.job_id, event.provider, event.dedup_key, event.received_at,
             event.headers_json, event.body, event.verdict),
        )
        if not inserted:
            return Outcome(duplicate=True, status=current)
    new = observation.status
    changed = False
    # When a verified callback last arrived: set by whichever update below writes the row.
    stamp = now if event is not None else None
    stamped = stamp is None
    if new is not None and new != current:
        changed = (yield Query(
            f"UPDATE jobs SET status = ?, error = COALESCE(?, error), progress = COALESCE(?, progress),"
            f" updated_at = ?, next_check_at = ?, slot_held = 0, sending = 0, callback_at = COALESCE(?, callback_at)"
            f" WHERE id = ? AND status IN ({_in(observed_predecessors(new))})",
            (str(new), observation.reason, observation.progress, now,
             None if new in TERMINAL else _min(next_check_at, deadline), stamp, job_id),
        )) == 1
        stamped = stamped or changed
    elif new is not None and new not in TERMINAL and new == current != Status.SUCCEEDED:
        # Same progress again (a new callback or poll): note it and reschedule.
        yield Query(
            "UPDATE jobs SET progress = COALESCE(?, progress), updated_at = ?, next_check_at = ?,"
            " callback_at = COALESCE(?, callback_at) WHERE id = ?",
            (observation.progress, now, _min(next_check_at, deadline), stamp, job_id),
        )
        stamped = True
    if not stamped:
        yield Query("UPDATE jobs SET callback_at = ? WHERE id = ?", (stamp, job_id))
    if observation.provider_job_id and not task:
        # The provider's task id, if the submit answer has not brought it yet (the row was read under
        # the write lock). Only then: an UPDATE naming provider_job_id rewrites its unique index entry
        # even when the value stays the same.
        try:
            yield Query("UPDATE jobs SET provider_job_id = COALESCE(provider_job_id, ?) WHERE id = ?",
                        (observation.provider_job_id, job_id))
        except UniqueViolation:
            raise TaskMismatch(f"provider task {observation.provider_job_id!r} belongs to another job") from None
    status = new if changed else current
    if (changed or new == current) and (observation.logs or observation.urls):
        # Progress as the provider reports it: the log tail and the outputs so far (no downloads yet).
        yield Query(
            "UPDATE jobs SET logs = COALESCE(?, logs), outputs = COALESCE(?, outputs) WHERE id = ?",
            (observation.logs, json.dumps(observation.urls) if observation.urls else None, job_id),
        )
    if observation.urls and status == Status.SUCCEEDED:
        # Fresh URLs (a re-poll after expiry) replace stale ones for files not yet stored.
        yield Query(
            "INSERT INTO files (job_id, n, url, expires_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (job_id, n) DO UPDATE SET url = excluded.url, expires_at = excluded.expires_at"
            " WHERE files.path IS NULL",
            tuple((job_id, n, url, at) for n, (url, at) in enumerate(zip(observation.urls, expires, strict=True))),
            "many",
        )
        yield from _update_download_by(job_id)
        yield Query("UPDATE jobs SET next_check_at = ? WHERE id = ?", (now, job_id))
    if changed:
        yield from emit(job_id, status, now)
    return Outcome(changed=changed, status=status, recorded=recorded)


def finish(
    job_id: str, status: Status, now: float, reason: str | None, only_from: frozenset[Status] | None,
    locate: Callable[[str], str] | None = None,
) -> Op[Outcome]:
    allowed = predecessors(status) if only_from is None else predecessors(status) & only_from
    changed = (yield Query(
        f"UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ?, next_check_at = NULL,"
        f" slot_held = 0, sending = 0, download_by = NULL WHERE id = ? AND status IN ({_in(allowed)})",
        (str(status), reason, now, job_id),
    )) == 1
    if changed:
        yield from emit(job_id, status, now, locate)
    current = yield from _status(job_id)
    return Outcome(changed=changed, status=current, found=current is not None)


# -- the outbox: one event per status change, in the change's transaction --------------

#: The event a job's arrival in a status writes; `queued` and `succeeded` write none (nobody waits on them).
EVENT_OF: dict[Status, str] = {s: f"job.{s}" for s in Status if f"job.{s}" in EVENT_TYPES}


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


def emit(job_id: str, status: Status, now: float, locate: Callable[[str], str] | None = None) -> Op[None]:
    """Write the outbox event for `job_id` having reached `status`, as the last step of the
    transaction that moved it: the event commits with the change or not at all.

    The outbox lock is held from the insert to the commit, so events commit in `seq` order and a
    reader that has seen `seq` n has seen every event below it (PostgreSQL hands out sequence
    values before commit; without the lock a later value could become visible first)."""
    kind = EVENT_OF.get(status)
    if kind is None:
        return
    row = yield Query("SELECT * FROM jobs WHERE id = ?", (job_id,), "one")
    stored = (yield from files(job_id)) if status == Status.STORED else []
    data = row_to_job(row).view(stored, locate)
    yield Lock("fluxhook-outbox")
    yield Query(
        "INSERT INTO outbox (id, job_id, type, created_at, data) VALUES (?, ?, ?, ?, ?)",
        (new_event_id(), job_id, kind, now, json.dumps(data, separators=(",", ":"))),
    )


# -- leases -------------------------------------------------------------------------------

_CLAIM_ORDER = "download_by IS NULL, download_by, next_check_at"
_KINDS = {None: "", True: f" AND status = {_SUCCEEDED}", False: f" AND status <> {_SUCCEEDED}"}


def claim_due(owner: str, now: float, lease: float, limit: int, downloads: bool | None) -> Op[list[Job]]:
    rows = yield Query(
        f"""UPDATE jobs SET lease_owner = ?, lease_until = ?
        WHERE {{ids_in}}
            SELECT id FROM jobs
            WHERE next_check_at <= ? AND (lease_until IS NULL OR lease_until < ?){_KINDS[downloads]}
            ORDER BY {_CLAIM_ORDER}
            LIMIT ? {{skip_locked}}{{ids_end}}
        RETURNING *""",
        (owner, now + lease, now, now, limit), "all",
    )
    jobs = [row_to_job(r) for r in rows]
    # RETURNING has no defined order: restore the claim order.
    return sorted(jobs, key=lambda j: (j.download_by is None, j.download_by or 0, j.next_check_at or 0))


def claim(job_id: str, owner: str, now: float, lease: float) -> Op[Job | None]:
    row = yield Query(
        "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE id = ?"
        " AND (lease_until IS NULL OR lease_until < ?) RETURNING *",
        (owner, now + lease, job_id, now), "one",
    )
    return row_to_job(row) if row is not None else None


def mark_sending(job_id: str, sending: bool) -> Op[None]:
    yield Query(f"UPDATE jobs SET sending = ? WHERE id = ? AND status = {_QUEUED}", (int(sending), job_id))


def renew(job_id: str, owner: str, until: float) -> Op[bool]:
    changed = yield Query("UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ?", (until, job_id, owner))
    return bool(changed == 1)


def release(job_id: str, owner: str, expect: Status | None, next_check_at: float | None, polled: bool) -> Op[None]:
    # If someone else (a callback) moved the job while we held it, their schedule wins.
    yield Query(
        f"""UPDATE jobs SET lease_owner = NULL, lease_until = NULL, polls = polls + ?,
            next_check_at = CASE WHEN status IN ({_TERMINAL_SQL}) THEN NULL
                                 WHEN status = ? THEN ? ELSE next_check_at END
        WHERE id = ? AND lease_owner = ?""",
        (int(polled), str(expect) if expect else None, next_check_at, job_id, owner),
    )


def set_note(job_id: str, note: str | None, now: float) -> Op[None]:
    yield Query("UPDATE jobs SET note = ?, updated_at = ? WHERE id = ?", (note, now, job_id))


def note_repoll(job_id: str) -> Op[None]:
    yield Query("UPDATE jobs SET repolls = repolls + 1, polls = polls + 1 WHERE id = ?", (job_id,))


# -- files and events -------------------------------------------------------------------

def store_file(job_id: str, n: int, path: str, size: int, sha256: str, content_type: str) -> Op[None]:
    # Lock order is jobs row, then files rows, in every transaction that takes both (apply does):
    # the other order deadlocks against a callback bringing URLs while a replica stores a file.
    yield Query("UPDATE jobs SET download_by = download_by WHERE id = ?", (job_id,))
    yield Query(
        "UPDATE files SET path = ?, size = ?, sha256 = ?, content_type = ?, attempts = attempts + 1"
        " WHERE job_id = ? AND n = ? AND path IS NULL",
        (path, size, sha256, content_type, job_id, n),
    )
    yield from _update_download_by(job_id)


def file_failed(job_id: str, n: int) -> Op[None]:
    yield Query("UPDATE files SET attempts = attempts + 1 WHERE job_id = ? AND n = ?", (job_id, n))


def prune_events(before: float, limit: int) -> Op[int]:
    count = yield Query(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < ? ORDER BY received_at LIMIT ?)",
        (before, limit),
    )
    return int(count)


def count_events(job_id: str) -> Op[int]:
    row = yield Query("SELECT COUNT(*) FROM events WHERE job_id = ?", (job_id,), "one")
    return int(row[0])


def jobs_since(since: float, limit: int) -> Op[list[Job]]:
    """Jobs created at or after `since`, newest first (the provider panel's window)."""
    rows = yield Query("SELECT * FROM jobs WHERE created_at >= ? ORDER BY created_at DESC, id DESC LIMIT ?",
                       (since, limit), "all")
    return [row_to_job(r) for r in rows]


def counts() -> Op[dict[str, int]]:
    rows = yield Query("SELECT status, COUNT(*) FROM jobs GROUP BY status", (), "all")
    return {r[0]: int(r[1]) for r in rows}


def ping() -> Op[None]:
    yield Query("SELECT 1", (), "one")


# -- what the CLI reads and the one sanctioned way back from a terminal status ------------

def audit_events(job_id: str, limit: int) -> Op[list[dict[str, Any]]]:
    """The job's received callbacks (the `events` audit table), oldest first, with their ids."""
    rows = yield Query(
        "SELECT id, job_id, provider, dedup_key, received_at, headers, body, verdict FROM events"
        " WHERE job_id = ? ORDER BY received_at, id LIMIT ?",
        (job_id, limit), "all",
    )
    return [
        {"id": int(r[0]), "job_id": r[1], "provider": r[2], "dedup_key": r[3], "received_at": r[4],
         "headers": json.loads(r[5]), "body": bytes(r[6]), "verdict": r[7]}
        for r in rows
    ]


def audit_event(event_id: int) -> Op[dict[str, Any] | None]:
    row = yield Query(
        "SELECT id, job_id, provider, dedup_key, received_at, headers, body, verdict FROM events WHERE id = ?",
        (event_id,), "one",
    )
    if row is None:
        return None
    return {"id": int(row[0]), "job_id": row[1], "provider": row[2], "dedup_key": row[3], "received_at": row[4],
            "headers": json.loads(row[5]), "body": bytes(row[6]), "verdict": row[7]}


def reopen_for_retry(job_id: str, now: float, store_until: float) -> Op[bool]:
    """Move a job that ended `failed` or `expired` in OUR download path back to `succeeded`, so the
    download pass tries its files again (re-polling the provider for fresh URLs when they expired).

    The one sanctioned exception to "a terminal status is final", and only where it cannot undo
    anything the provider said: the job must have a provider task, result file rows (written only
    when the provider reported a result, so the job was `succeeded` and the provider's word can no
    longer end it) and at least one file not stored. `deadline_at` is moved so that the download
    window (`store_by`) covers the retry: `store_until` minus the window, computed by the caller.
    Writes nothing to the outbox (`succeeded` has no event); the job's next end writes its event
    (a second terminal event for the job: consumers see e.g. job.failed, then job.stored)."""
    changed = yield Query(
        "UPDATE jobs SET status = ?, error = NULL,"
        " note = 'reopened for a download retry (fluxhook retry)', repolls = 0, next_check_at = ?,"
        " deadline_at = CASE WHEN deadline_at < ? THEN ? ELSE deadline_at END, updated_at = ?,"
        " lease_owner = NULL, lease_until = NULL"
        f" WHERE id = ? AND status IN ({_GAVE_UP}) AND provider_job_id IS NOT NULL"
        " AND EXISTS (SELECT 1 FROM files WHERE files.job_id = jobs.id AND files.path IS NULL)",
        (str(Status.SUCCEEDED), now, store_until, store_until, now, job_id),
    )
    if changed == 1:
        yield Query("UPDATE files SET attempts = 0 WHERE job_id = ? AND path IS NULL", (job_id,))
        yield from _update_download_by(job_id)
    return bool(changed == 1)


def reconciliation(since: float | None) -> Op[list[dict[str, Any]]]:
    """One row per job created since `since`: what `fluxhook report` counts."""
    rows = yield Query(
        "SELECT j.id, j.provider, j.status, j.provider_job_id, j.callback_at, j.polls, j.error, j.submitted_at,"
        " (SELECT COUNT(*) FROM files f WHERE f.job_id = j.id),"
        " (SELECT COUNT(*) FROM files f WHERE f.job_id = j.id AND f.path IS NOT NULL),"
        " (SELECT COUNT(*) FROM outbox o WHERE o.job_id = j.id AND o.type = 'job.stored'),"
        " (SELECT COUNT(*) FROM events e WHERE e.job_id = j.id)"
        " FROM jobs j WHERE j.created_at >= ? ORDER BY j.created_at, j.id",
        (since if since is not None else -1e300,), "all",
    )
    keys = ("id", "provider", "status", "provider_job_id", "callback_at", "polls", "error", "submitted_at",
            "files", "stored_files", "stored_events", "callbacks")
    return [dict(zip(keys, r, strict=True)) for r in rows]

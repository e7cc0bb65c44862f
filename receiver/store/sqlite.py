"""SQLite backend (WAL): the embedded default.

The connection lives on one dedicated thread and every store operation runs
there as a single function: one thread hand-off per transaction, where a
statement-at-a-time async driver pays one per statement (a callback's
transaction has about ten).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from submitter.bodies import Observation
from submitter.status import ACTIVE, TERMINAL, Status, observed_predecessors, predecessors

from . import Event, FileRecord, Job, Outcome, StoreUnavailable, TaskMismatch

__all__ = ["MIGRATIONS", "SQLiteStore"]

T = TypeVar("T")
DB = sqlite3.Connection

#: Numbered schema steps; each runs once, in a transaction with its record.
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
]

_JOB_FIELDS = {f for f in Job.__dataclass_fields__}
_TERMINAL_SQL = ",".join(f"'{s}'" for s in sorted(TERMINAL))
_ACTIVE_SQL = ",".join(f"'{s}'" for s in sorted(ACTIVE))


def _in(statuses: frozenset[Status]) -> str:
    return ",".join(f"'{s}'" for s in sorted(statuses)) or "NULL"


def _job(row: sqlite3.Row) -> Job:
    data = {k: row[k] for k in row.keys() if k in _JOB_FIELDS}
    data["params"] = json.loads(data["params"])
    data["options"] = json.loads(data["options"])
    data["outputs"] = tuple(json.loads(data["outputs"])) if data["outputs"] else ()
    data["status"] = Status(data["status"])
    data["slot_held"] = bool(data["slot_held"])
    data["sending"] = bool(data["sending"])
    return Job(**data)


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(**{k: row[k] for k in row.keys()})


def _migrate(db: DB) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    for version, name, sql in MIGRATIONS:
        if version in done:
            continue
        for statement in filter(str.strip, sql.split(";")):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))


def _commit_together(db: DB, batch: list[tuple[Callable[[DB], Any], Any]]) -> list[tuple[bool, Any]]:
    """One transaction for many calls, each in a savepoint; (ok, result or exception) per call."""
    results: list[tuple[bool, Any]] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for fn, _ in batch:
            db.execute("SAVEPOINT item")
            try:
                results.append((True, fn(db)))
            except Exception as exc:
                db.execute("ROLLBACK TO item")
                results.append((False, exc))
            db.execute("RELEASE item")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


def _status(db: DB, job_id: str) -> Status | None:
    row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return Status(row[0]) if row else None


def _update_download_by(db: DB, job_id: str) -> None:
    db.execute(
        "UPDATE jobs SET download_by = (SELECT MIN(expires_at) FROM files WHERE job_id = ? AND path IS NULL)"
        " WHERE id = ?",
        (job_id, job_id),
    )


def _apply(
    db: DB, job_id: str, observation: Observation, now: float, next_check_at: float | None,
    event: Event | None, expires: tuple[float, ...], keep_events: int | None = None,
) -> Outcome:
    row = db.execute("SELECT status, provider_job_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return Outcome(found=False)
    current = Status(row[0])
    if row[1] and observation.provider_job_id and observation.provider_job_id != row[1]:
        raise TaskMismatch(f"event names provider task {observation.provider_job_id!r}, the job has another")
    if current in TERMINAL:
        return Outcome(status=current)  # finished: nothing to change, nothing more to keep
    if event is not None and keep_events is not None and db.execute(
        "SELECT COUNT(*) FROM events WHERE job_id = ?", (job_id,)
    ).fetchone()[0] >= keep_events:
        event = None  # the audit cap for this job is reached: apply, but keep no more
    recorded = event is not None
    if event is not None:
        inserted = db.execute(
            "INSERT INTO events (job_id, provider, dedup_key, received_at, headers, body, verdict)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING",
            (event.job_id, event.provider, event.dedup_key, event.received_at,
             json.dumps(event.headers), event.body, event.verdict),
        ).rowcount
        if not inserted:
            return Outcome(duplicate=True, status=current)
    new = observation.status
    changed = False
    if new is not None and new != current:
        changed = db.execute(
            f"UPDATE jobs SET status = ?, error = COALESCE(?, error), progress = COALESCE(?, progress),"
            f" updated_at = ?, next_check_at = MIN(?, deadline_at), slot_held = 0, sending = 0"
            f" WHERE id = ? AND status IN ({_in(observed_predecessors(new))})",
            (str(new), observation.reason, observation.progress, now,
             None if new in TERMINAL else next_check_at, job_id),
        ).rowcount == 1
    elif new is not None and new not in TERMINAL and new == current:
        # Same progress again (a new callback or poll): note it and reschedule.
        db.execute(
            "UPDATE jobs SET progress = COALESCE(?, progress), updated_at = ?, next_check_at = MIN(?, deadline_at)"
            " WHERE id = ?",
            (observation.progress, now, next_check_at, job_id),
        )
    try:
        db.execute(
            "UPDATE jobs SET provider_job_id = COALESCE(provider_job_id, ?), callback_at = COALESCE(?, callback_at)"
            " WHERE id = ?",
            (observation.provider_job_id, now if event is not None else None, job_id),
        )
    except sqlite3.IntegrityError:
        raise TaskMismatch(f"provider task {observation.provider_job_id!r} belongs to another job") from None
    status = new if changed else current
    if (changed or new == current) and (observation.logs or observation.urls):
        # Progress as the provider reports it: the log tail and the outputs so far (no downloads yet).
        db.execute(
            "UPDATE jobs SET logs = COALESCE(?, logs), outputs = COALESCE(?, outputs) WHERE id = ?",
            (observation.logs, json.dumps(observation.urls) if observation.urls else None, job_id),
        )
    if observation.urls and status == Status.SUCCEEDED:
        # Fresh URLs (a re-poll after expiry) replace stale ones for files not yet stored.
        db.executemany(
            "INSERT INTO files (job_id, n, url, expires_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (job_id, n) DO UPDATE SET url = excluded.url, expires_at = excluded.expires_at"
            " WHERE files.path IS NULL",
            [(job_id, n, url, at) for n, (url, at) in enumerate(zip(observation.urls, expires, strict=True))],
        )
        _update_download_by(db, job_id)
        db.execute("UPDATE jobs SET next_check_at = ? WHERE id = ?", (now, job_id))
    return Outcome(changed=changed, status=status, recorded=recorded)


class SQLiteStore:
    """The :class:`~receiver.store.Store` on one SQLite file; several processes may share it."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._batch: list[tuple[Callable[[DB], Any], asyncio.Future[Any]]] = []
        self._committing = False

    # -- plumbing -------------------------------------------------------------------

    async def _call(self, fn: Callable[[DB], T]) -> T:
        if self._conn is None or self._thread is None:
            raise StoreUnavailable("the store is not open")
        conn = self._conn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, conn)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"database error: {exc}") from exc

    async def _tx(self, fn: Callable[[DB], T]) -> T:
        """Run `fn` in one write transaction (taken at once: BEGIN IMMEDIATE)."""

        def transaction(db: DB) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self._call(transaction)

    async def _grouped(self, fn: Callable[[DB], T]) -> T:
        """Run `fn` in a shared write transaction (group commit).

        Calls that arrive while a commit is in progress are queued and committed
        together in the next transaction, each inside its own savepoint so one
        failing call does not undo the others. Every caller still returns only after
        its own work is durable; under load, many callbacks share one fsync.
        """
        if self._conn is None or self._thread is None:
            raise StoreUnavailable("the store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((fn, future))
        if not self._committing:
            self._flush()
        return await future  # type: ignore[no-any-return]

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        self._committing = True
        assert self._thread is not None and self._conn is not None
        running = asyncio.get_running_loop().run_in_executor(self._thread, _commit_together, self._conn, batch)

        def settle(done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
            self._committing = False
            try:
                results = done.result()
            except BaseException as exc:  # the transaction as a whole failed
                error = StoreUnavailable(f"database error: {exc}") if isinstance(exc, sqlite3.Error) else exc
                results = [(False, error)] * len(batch)
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                elif isinstance(value, sqlite3.Error) and not isinstance(value, sqlite3.IntegrityError):
                    future.set_exception(StoreUnavailable(f"database error: {value}"))
                else:
                    future.set_exception(value)
            self._flush()  # whatever queued up meanwhile

        running.add_done_callback(settle)

    async def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        return await self._tx(lambda db: db.execute(sql, args).rowcount)

    async def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return await self._call(lambda db: db.execute(sql, args).fetchall())

    async def open(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        if self.path != ":memory:" and not os.path.isdir(parent):
            raise StoreUnavailable(f"cannot open the database {self.path}: folder {parent} does not exist")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fluxhook-sqlite")

        def connect(_: None) -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            return conn

        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(self._thread, connect, None)
            await self._tx(_migrate)
        except (sqlite3.Error, StoreUnavailable) as exc:
            await self.close()
            raise StoreUnavailable(f"cannot open the database {self.path}: {exc}") from exc

    async def close(self) -> None:
        conn, thread = self._conn, self._thread
        self._conn = self._thread = None
        if thread is not None:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
            thread.shutdown(wait=True)

    # -- jobs ---------------------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        await self._write(
            "INSERT INTO jobs (id, provider, model, params, options, status, created_at, deadline_at, updated_at,"
            " next_check_at, lease_owner, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.provider, job.model, json.dumps(job.params), json.dumps(job.options), str(job.status),
             job.created_at, job.deadline_at, job.created_at, job.next_check_at, job.lease_owner, job.lease_until),
        )

    async def get_job(self, job_id: str) -> Job | None:
        rows = await self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    async def list_jobs(self, status: Status | None = None, limit: int = 100) -> list[Job]:
        if status is None:
            rows = await self._read("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = await self._read(
                "SELECT * FROM jobs WHERE status = ? ORDER BY created_at DESC LIMIT ?", (str(status), limit)
            )
        return [_job(r) for r in rows]

    async def files(self, job_id: str) -> list[FileRecord]:
        rows = await self._read("SELECT * FROM files WHERE job_id = ? ORDER BY n", (job_id,))
        return [_file(r) for r in rows]

    async def reserve_slot(self, job_id: str, *, cap: int, model_cap: int, now: float) -> bool:
        # One statement: the counts and the reservation cannot interleave with another writer.
        active = f"(o.status IN ({_ACTIVE_SQL}) OR (o.status = 'queued' AND o.slot_held = 1))"
        changed = await self._write(
            f"""UPDATE jobs SET slot_held = 1, submit_attempts = submit_attempts + 1, updated_at = ?
            WHERE id = ? AND status = 'queued' AND slot_held = 0
              AND (SELECT COUNT(*) FROM jobs AS o WHERE o.provider = jobs.provider AND {active}) < ?
              AND (SELECT COUNT(*) FROM jobs AS o WHERE o.provider = jobs.provider
                   AND o.model = jobs.model AND {active}) < ?""",
            (now, job_id, cap, model_cap),
        )
        return changed == 1

    async def record_submit(
        self, job_id: str, provider_job_id: str | None, polling_url: str | None, *, now: float,
        next_check_at: float | None, note: str | None = None,
    ) -> Outcome:
        def tx(db: DB) -> Outcome:
            before = db.execute("SELECT provider_job_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            # The ids are kept even when a callback already moved the job on (it raced this answer).
            db.execute(
                "UPDATE jobs SET provider_job_id = COALESCE(provider_job_id, ?),"
                " polling_url = COALESCE(polling_url, ?), submitted_at = COALESCE(submitted_at, ?),"
                " note = COALESCE(?, note), slot_held = 0, sending = 0, updated_at = ? WHERE id = ?",
                (provider_job_id, polling_url, now, note, now, job_id),
            )
            changed = db.execute(
                "UPDATE jobs SET status = 'submitted', next_check_at = ? WHERE id = ? AND status = 'queued'",
                (next_check_at, job_id),
            ).rowcount == 1
            if not changed and before is not None and before[0] is None and provider_job_id is not None:
                # The answer comes after the job was reconciled as "outcome unknown" (waiting for the
                # deadline): now that it can be polled, poll it on the normal schedule.
                db.execute(
                    "UPDATE jobs SET next_check_at = MIN(COALESCE(next_check_at, ?), ?)"
                    " WHERE id = ? AND status IN ('submitted', 'running')",
                    (next_check_at, next_check_at, job_id),
                )
            status = _status(db, job_id)
            return Outcome(changed=changed, status=status, found=status is not None)

        return await self._tx(tx)

    async def defer(
        self, job_id: str, *, next_check_at: float, note: str | None, now: float, release_slot: bool = True
    ) -> None:
        await self._write(
            "UPDATE jobs SET slot_held = CASE WHEN ? THEN 0 ELSE slot_held END, sending = 0, next_check_at = ?,"
            " note = ?, updated_at = ? WHERE id = ? AND status = 'queued'",
            (release_slot, next_check_at, note, now, job_id),
        )

    async def apply(
        self, job_id: str, observation: Observation, *, now: float, next_check_at: float | None,
        event: Event | None = None, expires: tuple[float, ...] = (), keep_events: int | None = None,
    ) -> Outcome:
        return await self._grouped(
            lambda db: _apply(db, job_id, observation, now, next_check_at, event, expires, keep_events)
        )

    async def finish(
        self, job_id: str, status: Status, *, now: float, reason: str | None = None,
        only_from: frozenset[Status] | None = None,
    ) -> Outcome:
        allowed = predecessors(status) if only_from is None else predecessors(status) & only_from

        def tx(db: DB) -> Outcome:
            changed = db.execute(
                f"UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ?, next_check_at = NULL,"
                f" slot_held = 0, sending = 0, download_by = NULL WHERE id = ? AND status IN ({_in(allowed)})",
                (str(status), reason, now, job_id),
            ).rowcount == 1
            current = _status(db, job_id)
            return Outcome(changed=changed, status=current, found=current is not None)

        return await self._tx(tx)

    # -- leases -------------------------------------------------------------------

    async def claim_due(
        self, owner: str, *, now: float, lease: float, limit: int, downloads: bool | None = None
    ) -> list[Job]:
        kind = {None: "", True: " AND status = 'succeeded'", False: " AND status <> 'succeeded'"}[downloads]
        rows = await self._tx(lambda db: db.execute(
            f"""UPDATE jobs SET lease_owner = ?, lease_until = ?
            WHERE id IN (
                SELECT id FROM jobs
                WHERE next_check_at <= ? AND (lease_until IS NULL OR lease_until < ?){kind}
                ORDER BY download_by IS NULL, download_by, next_check_at
                LIMIT ?)
            RETURNING *""",
            (owner, now + lease, now, now, limit),
        ).fetchall())
        jobs = [_job(r) for r in rows]
        # RETURNING has no defined order: restore the claim order.
        return sorted(jobs, key=lambda j: (j.download_by is None, j.download_by or 0, j.next_check_at or 0))

    async def claim(self, job_id: str, owner: str, *, now: float, lease: float) -> Job | None:
        row = await self._tx(lambda db: db.execute(
            "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE id = ?"
            " AND (lease_until IS NULL OR lease_until < ?) RETURNING *",
            (owner, now + lease, job_id, now),
        ).fetchone())
        return _job(row) if row else None

    async def mark_sending(self, job_id: str, sending: bool) -> None:
        await self._write("UPDATE jobs SET sending = ? WHERE id = ? AND status = 'queued'", (int(sending), job_id))

    async def renew(self, job_id: str, owner: str, *, until: float) -> bool:
        return await self._write(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ?", (until, job_id, owner)
        ) == 1

    async def release(
        self, job_id: str, owner: str, *, expect: Status | None, next_check_at: float | None, polled: bool = False
    ) -> None:
        # If someone else (a callback) moved the job while we held it, their schedule wins.
        await self._write(
            f"""UPDATE jobs SET lease_owner = NULL, lease_until = NULL, polls = polls + ?,
                next_check_at = CASE WHEN status IN ({_TERMINAL_SQL}) THEN NULL
                                     WHEN status = ? THEN ? ELSE next_check_at END
            WHERE id = ? AND lease_owner = ?""",
            (int(polled), str(expect) if expect else None, next_check_at, job_id, owner),
        )

    async def note_repoll(self, job_id: str) -> None:
        await self._write("UPDATE jobs SET repolls = repolls + 1, polls = polls + 1 WHERE id = ?", (job_id,))

    # -- files and events -------------------------------------------------------------

    async def store_file(
        self, job_id: str, n: int, *, path: str, size: int, sha256: str, content_type: str
    ) -> None:
        def tx(db: DB) -> None:
            db.execute(
                "UPDATE files SET path = ?, size = ?, sha256 = ?, content_type = ?, attempts = attempts + 1"
                " WHERE job_id = ? AND n = ? AND path IS NULL",
                (path, size, sha256, content_type, job_id, n),
            )
            _update_download_by(db, job_id)

        await self._tx(tx)

    async def file_failed(self, job_id: str, n: int) -> None:
        await self._write("UPDATE files SET attempts = attempts + 1 WHERE job_id = ? AND n = ?", (job_id, n))

    async def prune_events(self, before: float, *, limit: int = 5000) -> int:
        return await self._write(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < ? ORDER BY received_at LIMIT ?)",
            (before, limit),
        )

    async def count_events(self, job_id: str) -> int:
        rows = await self._read("SELECT COUNT(*) FROM events WHERE job_id = ?", (job_id,))
        return int(rows[0][0])

    async def counts(self) -> dict[str, int]:
        rows = await self._read("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {r[0]: int(r[1]) for r in rows}

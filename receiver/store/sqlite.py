"""SQLite backend (WAL): the embedded default.

The connection lives on one dedicated thread and every store operation (the
shared logic in :mod:`receiver.store.sql`) runs there whole: one thread hand-off
per transaction, where a statement-at-a-time async driver pays one per statement
(a callback's transaction has about ten). Concurrent callbacks share one commit.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from receiver.store.models import Event, Job, Outcome, StoreUnavailable
from receiver.store.ops_store import OpsStore
from receiver.store.sql import jobs, transitions
from receiver.store.sql.plumbing import Lock, Op, Query, SqlDialect, UniqueViolation
from submitter.bodies import Observation

__all__ = ["SQLITE", "SQLiteStore"]

T = TypeVar("T")
DB = sqlite3.Connection
SQLITE = SqlDialect("sqlite")


def run_op(db: DB, op: Op[T]) -> T:
    """Drive one shared operation to its end on this connection (the caller holds the transaction)."""
    try:
        step = next(op)
        while True:
            if isinstance(step, Lock):  # writers are serial already (BEGIN IMMEDIATE)
                step = op.send(None)
                continue
            try:
                result = _execute(db, step)
            except sqlite3.IntegrityError as exc:
                step = op.throw(UniqueViolation(str(exc)))
                continue
            step = op.send(result)
    except StopIteration as stop:
        return stop.value


def _execute(db: DB, query: Query) -> Any:
    sql = SQLITE.compile(query.sql)
    if query.want == "many":
        db.executemany(sql, query.args)
        return None  # as on PostgreSQL, whose executemany reports no counts
    cursor = db.execute(sql, query.args)
    if query.want == "one":
        return cursor.fetchone()
    if query.want == "all":
        return cursor.fetchall()
    return cursor.rowcount


def _transaction(db: DB, fn: Callable[[DB], T]) -> T:
    """`fn` in one write transaction, taken at once (BEGIN IMMEDIATE); rolled back if anything raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


class _CallFailed(Exception):
    """A call of a batch raised `error` (told apart from the transaction's own failures)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _commit_together(db: DB, batch: list[tuple[Callable[[DB], Any], Any]]) -> list[tuple[bool, Any]]:
    """One transaction for many calls; (ok, result or exception) per call.

    Optimistically, all of them in the transaction as they are. Should one raise, the transaction is
    rolled back and the batch run again with each call in its own savepoint, so the failing one
    undoes only itself (each call builds its operation afresh, and nothing was committed). The
    savepoints, two statements per call, are thus paid only by a batch with a failure in it."""

    def all_at_once(db: DB) -> list[tuple[bool, Any]]:
        results = []
        for fn, _ in batch:
            try:
                results.append((True, fn(db)))
            except Exception as exc:
                raise _CallFailed(exc) from exc
        return results

    try:
        return _transaction(db, all_at_once)
    except _CallFailed as failed:
        if len(batch) == 1:
            return [(False, failed.error)]
    return _transaction(db, lambda db: [_savepointed(db, fn) for fn, _ in batch])


def _savepointed(db: DB, fn: Callable[[DB], Any]) -> tuple[bool, Any]:
    """`fn` in a savepoint: undone alone if it raises."""
    db.execute("SAVEPOINT item")
    try:
        outcome: tuple[bool, Any] = (True, fn(db))
    except Exception as exc:
        db.execute("ROLLBACK TO item")
        outcome = (False, exc)
    db.execute("RELEASE item")
    return outcome


class SQLiteStore(OpsStore):
    """The :class:`~receiver.store.protocol.Store` on one SQLite file; several processes may share it."""

    dialect = SQLITE

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        super().__init__()
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
        return await self._call(lambda db: _transaction(db, fn))

    async def _grouped(self, fn: Callable[[DB], T]) -> T:
        """Run `fn` in a shared write transaction (group commit).

        Calls that arrive while a commit is in progress are queued and committed
        together in the next transaction; one failing call does not undo the others
        (see :func:`_commit_together`). Every caller still returns only after
        its own work is durable; under load, many callbacks share one fsync.
        """
        if self._conn is None or self._thread is None:
            raise StoreUnavailable("the store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((fn, future))
        if not self._committing:
            self._flush()
        return await future

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

    async def open(self, *, migrate: bool = True) -> None:
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
            if migrate:
                await self.migrate()
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

    async def _op(self, op: Op[T]) -> T:
        """Run a shared operation in its own write transaction."""
        return await self._tx(lambda db: run_op(db, op))

    async def _read_op(self, op: Op[T]) -> T:
        return await self._call(lambda db: run_op(db, op))


    # -- where SQLite differs --------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        try:
            await self._op(jobs.create_job(job))
        except UniqueViolation:
            raise sqlite3.IntegrityError(f"job {job.id!r} exists") from None

    async def apply(
        self, job_id: str, observation: Observation, *, now: float, next_check_at: float | None,
        event: Event | None = None, expires: tuple[float, ...] = (), keep_events: int | None = None,
    ) -> Outcome:
        # Group commit: concurrent callbacks share one transaction (and one fsync), each in a savepoint.
        return self._changed(await self._grouped(lambda db: run_op(
            db, transitions.apply(job_id, observation, now, next_check_at, event, expires, keep_events)
        )))

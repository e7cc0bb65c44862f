"""Reads and writes of the ledger that only tests make: kept here, not on the Store interface.

Each helper takes any :class:`~receiver.store.protocol.Store` (a backend, or the
:class:`~receiver.store.redacting.RedactingStore` around one, as `Runtime.store` is). Where the
interface can answer, the helper goes through it; the rest (raw SQL, taking one job's lease) runs
as a shared operation on the backend's own runner, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from receiver.store import AttemptRecord, Delivery, Job, OutboxEvent, Store
from receiver.store.ops_store import OpsStore
from receiver.store.redacting import RedactingStore
from receiver.store.sql import Op, Query, row_to_job

__all__ = ["claim", "count_events", "event_by_id", "record_attempt", "rows", "write"]


def backend(store: Store) -> OpsStore:
    """The backend under any wrappers."""
    while isinstance(store, RedactingStore):
        store = store.inner
    assert isinstance(store, OpsStore), store
    return store


async def rows(store: Store, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of one read statement (`?` placeholders), as the backend's driver returns them."""

    def op() -> Op[list[Any]]:
        return list((yield Query(sql, args, "all")))

    # _read_op: the backends' own runner of a shared operation (not part of the Store interface).
    return await backend(store)._read_op(op())


async def write(store: Store, sql: str, args: tuple[Any, ...] = ()) -> int:
    """Run one write statement (`?` placeholders) in its own transaction; the rows it changed."""

    def op() -> Op[int]:
        return int((yield Query(sql, args)))

    return await backend(store)._op(op())


async def count_events(store: Store, job_id: str) -> int:
    """How many received callbacks the job has kept in the audit log."""
    return len(await store.audit_events(job_id))


async def claim(store: Store, job_id: str, owner: str, *, now: float, lease: float) -> Job | None:
    """Take one job's lease, due or not (as another replica would), unless someone holds it; the job
    as leased, or None."""

    def op() -> Op[Job | None]:
        row = yield Query(
            "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE id = ?"
            " AND (lease_until IS NULL OR lease_until < ?) RETURNING *",
            (owner, now + lease, job_id, now), "one",
        )
        return row_to_job(row) if row is not None else None

    return await backend(store)._op(op())


async def event_by_id(store: Store, event_id: str) -> OutboxEvent | None:
    """The outbox event with this id, or None."""
    return next((e for e in await store.events_after(0, limit=100_000) if e.id == event_id), None)


async def _delivery(store: Store, delivery_id: int) -> Delivery:
    (found,) = [d for d in await store.deliveries(limit=100_000) if d.id == delivery_id]
    return found


async def record_attempt(
    store: Store, delivery_id: int, owner: str, *, at: float, code: int | None, latency_ms: float,
    error: str | None, state: str, next_at: float | None,
) -> bool:
    """One attempt through :meth:`~receiver.store.protocol.Store.record_attempts` (as the relay records
    them); True if it moved the delivery to `state`, False if `owner` no longer held its lease (the
    attempt is on record all the same)."""
    before = await _delivery(store, delivery_id)
    await store.record_attempts(owner, [AttemptRecord(
        delivery_id, before.seq, at, code, latency_ms, error, state, next_at,
    )])
    return (await _delivery(store, delivery_id)).attempts == before.attempts + 1

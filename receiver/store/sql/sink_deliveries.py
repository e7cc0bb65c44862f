"""The deliveries that carry outbox events to sinks, for every backend.

Events are written by the status changes themselves (:func:`receiver.store.sql.outbox.emit`).
Here: fanning each sink's share out into `deliveries` rows (one per event and sink, unique),
leasing due deliveries the way jobs are leased (so several replicas never hold the same one), and
recording every attempt.

A delivery is due when its time has come **and** no earlier delivery of the same job to the same
sink is still pending: per job and sink, events go out in sequence order; a sink that is down
holds back only its own deliveries.
"""

from __future__ import annotations

from typing import Any

from receiver.store.models import AttemptRecord, Delivery, OutboxEvent, SinkState
from receiver.store.sql.outbox import row_to_event
from receiver.store.sql.plumbing import Op, Query, marks

__all__ = [
    "claim_deliveries", "deliveries", "delivery_attempts", "enable_sink", "fan_out",
    "record_attempts", "redeliver", "register_sink", "set_sink_disabled", "sinks",
]


def _sink(row: Any) -> SinkState:
    return SinkState(name=row["name"], kind=row["kind"], display=row["display"], after_seq=int(row["after_seq"]),
                     disabled_at=row["disabled_at"], disabled_reason=row["disabled_reason"])


def register_sink(name: str, kind: str, display: str, now: float) -> Op[SinkState]:
    """Make `name` known; a new sink starts after the newest event (it is owed what happens from now on)."""
    yield Query(
        "INSERT INTO sinks (name, kind, display, after_seq, created_at)"
        " VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) FROM outbox), ?)"
        " ON CONFLICT (name) DO UPDATE SET display = excluded.display",
        (name, kind, display, now),
    )
    row = yield Query("SELECT * FROM sinks WHERE name = ?", (name,), "one")
    return _sink(row)


def sinks() -> Op[list[SinkState]]:
    rows = yield Query("SELECT * FROM sinks ORDER BY name", (), "all")
    return [_sink(r) for r in rows]


def set_sink_disabled(name: str, reason: str | None, now: float) -> Op[bool]:
    """Disable `name` (a `reason`), or with None enable it again; True if the sink exists."""
    changed = yield Query(
        "UPDATE sinks SET disabled_at = ?, disabled_reason = ? WHERE name = ?",
        (now if reason is not None else None, reason, name),
    )
    return bool(changed)


def enable_sink(name: str, now: float) -> Op[bool]:
    """Enable `name` again; its pending deliveries are due at once."""
    found = yield from set_sink_disabled(name, None, now)
    yield Query("UPDATE deliveries SET next_at = ? WHERE sink = ? AND state = 'pending'", (now, name))
    return found


def fan_out(name: str, types: frozenset[str], now: float, limit: int) -> Op[int]:
    """Create `name`'s deliveries for the events after its position (those of `types`), and move
    the position on; returns how many events were passed. The sink row is locked meanwhile, so
    replicas fanning out together create each delivery once (it is unique all the same)."""
    row = yield Query("SELECT after_seq, disabled_at FROM sinks WHERE name = ? {for_update}", (name,), "one")
    if row is None or row[1] is not None:
        return 0
    events = yield Query("SELECT seq, job_id, type FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                         (row[0], limit), "all")
    if not events:
        return 0
    wanted = tuple((name, e[0], e[1], now, now) for e in events if e[2] in types)
    if wanted:
        yield Query(
            "INSERT INTO deliveries (sink, seq, job_id, next_at, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (sink, seq) DO NOTHING",
            wanted, "many",
        )
    yield Query("UPDATE sinks SET after_seq = ? WHERE name = ?", (events[-1][0], name))
    return len(events)


_DELIVERY = (
    "SELECT d.*, o.id AS event_id, o.type AS event_type FROM deliveries AS d LEFT JOIN outbox AS o ON o.seq = d.seq"
)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=int(row["id"]), sink=row["sink"], seq=int(row["seq"]), event_id=row["event_id"], job_id=row["job_id"],
        state=row["state"], attempts=int(row["attempts"]), next_at=row["next_at"], created_at=row["created_at"],
        delivered_at=row["delivered_at"], last_code=row["last_code"], last_error=row["last_error"],
        event_type=row["event_type"],
    )


def claim_deliveries(
    owner: str, sink: str, now: float, lease: float, limit: int
) -> Op[list[tuple[Delivery, OutboxEvent]]]:
    """Lease up to `limit` due deliveries to `sink` (if it is enabled), oldest due first, at most one per job."""
    rows = yield Query(
        """UPDATE deliveries SET lease_owner = ?, lease_until = ?
        WHERE {ids_in}
            SELECT d.id FROM deliveries AS d
            WHERE d.sink = ? AND d.state = 'pending' AND d.next_at <= ?
              AND (d.lease_until IS NULL OR d.lease_until < ?)
              AND d.sink IN (SELECT name FROM sinks WHERE disabled_at IS NULL)
              AND NOT EXISTS (SELECT 1 FROM deliveries AS e WHERE e.sink = d.sink AND e.job_id = d.job_id
                              AND e.state = 'pending' AND e.seq < d.seq)
            ORDER BY d.next_at, d.seq
            LIMIT ? {skip_locked}{ids_end}
        RETURNING id""",
        (owner, now + lease, sink, now, now, limit), "all",
    )
    if not rows:
        return []
    ids = [int(r[0]) for r in rows]
    found = yield Query(f"{_DELIVERY} WHERE d.id IN ({marks(ids)}) ORDER BY d.seq", tuple(ids), "all")
    events = yield Query(
        f"SELECT * FROM outbox WHERE seq IN ({marks(found)})", tuple(int(r["seq"]) for r in found), "all"
    )
    by_seq = {int(e["seq"]): row_to_event(e) for e in events}
    return [(_delivery(r), by_seq[int(r["seq"])]) for r in found if int(r["seq"]) in by_seq]


def record_attempts(owner: str, records: tuple[AttemptRecord, ...]) -> Op[None]:
    """A batch of attempts in one transaction: each recorded, and each delivery still leased by
    `owner` moved to its new state (one whose lease was lost keeps the state its new holder gives it)."""
    if not records:
        return
    yield Query(
        "INSERT INTO delivery_attempts (delivery_id, seq, at, code, latency_ms, error) VALUES (?, ?, ?, ?, ?, ?)",
        tuple((r.delivery_id, r.seq, r.at, r.code, r.latency_ms, r.error) for r in records), "many",
    )
    yield Query(
        "UPDATE deliveries SET attempts = attempts + 1, state = ?, next_at = ?, last_code = ?, last_error = ?,"
        " delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END,"
        " lease_owner = NULL, lease_until = NULL"
        " WHERE id = ? AND lease_owner = ? AND state = 'pending'",
        tuple((r.state, r.next_at if r.state == "pending" else None, r.code, r.error, r.state, r.at,
               r.delivery_id, owner) for r in records),
        "many",
    )


def deliveries(state: str | None, limit: int, event_id: str | None = None) -> Op[list[Delivery]]:
    where, args = [], []
    if state is not None:
        where.append("d.state = ?")
        args.append(state)
    if event_id is not None:
        where.append("o.id = ?")
        args.append(event_id)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = yield Query(f"{_DELIVERY}{clause} ORDER BY d.seq DESC, d.sink LIMIT ?", (*args, limit), "all")
    return [_delivery(r) for r in rows]


def delivery_attempts(delivery_id: int) -> Op[list[dict[str, Any]]]:
    rows = yield Query(
        "SELECT at, code, latency_ms, error FROM delivery_attempts WHERE delivery_id = ? ORDER BY at",
        (delivery_id,), "all",
    )
    return [{"at": r[0], "code": r[1], "latency_ms": r[2], "error": r[3]} for r in rows]


def redeliver(event_id: str | None, failed: bool, sinks_for: dict[str, frozenset[str]], now: float) -> Op[int]:
    """Make deliveries due again: of one event to every sink in `sinks_for` that takes its type
    (created if missing), and/or every dead one (`failed`). Each gets a fresh retry window. A lease
    is left alone: a delivery in flight is not sent a second time beside it."""
    count = 0
    if event_id is not None:
        event = yield Query("SELECT seq, job_id, type FROM outbox WHERE id = ?", (event_id,), "one")
        if event is None:
            return -1
        for name, types in sorted(sinks_for.items()):
            if event[2] not in types:
                continue
            count += yield Query(
                "INSERT INTO deliveries (sink, seq, job_id, next_at, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (sink, seq) DO UPDATE SET state = 'pending', next_at = excluded.next_at,"
                " created_at = excluded.created_at",
                (name, event[0], event[1], now, now),
            )
    if failed:
        count += yield Query(
            "UPDATE deliveries SET state = 'pending', next_at = ?, created_at = ? WHERE state = 'dead'",
            (now, now),
        )
    return int(count)

"""The event outbox: one event per status change, written in the change's transaction (:func:`emit`),
read by position (SSE, long-polls, the relay), and pruned with its deliveries."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from receiver.config.integrations import EVENT_TYPES
from receiver.store.models import OutboxEvent
from receiver.store.sql.jobs import files
from receiver.store.sql.plumbing import Lock, Op, Query, marks
from receiver.store.sql.rows import row_to_job
from submitter.status import Status

__all__ = [
    "EVENT_OF", "PROMPT_LIMIT", "emit", "event_prompt", "events_after", "last_seq", "new_event_id", "prune_outbox",
    "row_to_event",
]


#: The event a job's arrival in a status writes; `queued` and `succeeded` write none (nobody waits on them).
EVENT_OF: dict[Status, str] = {s: f"job.{s}" for s in Status if f"job.{s}" in EVENT_TYPES}


#: The longest prompt an event carries (characters); a longer one is cut and `prompt_truncated` says so.
PROMPT_LIMIT = 2000


def event_prompt(params: dict[str, Any]) -> dict[str, Any]:
    """The event data's `prompt` (the job's `params.prompt`, cut to PROMPT_LIMIT characters; null when
    there is none) and `prompt_truncated`: the whole prompt stays with the job (`fluxhook status JOB --full`)."""
    prompt = params.get("prompt") if isinstance(params, dict) else None
    if not isinstance(prompt, str):
        return {"prompt": None, "prompt_truncated": False}
    return {"prompt": prompt[:PROMPT_LIMIT], "prompt_truncated": len(prompt) > PROMPT_LIMIT}


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
    job = row_to_job(row)
    data = job.view(stored, locate) | event_prompt(job.params)
    yield Lock("fluxhook-outbox")
    yield Query(
        "INSERT INTO outbox (id, job_id, type, created_at, data, created_by) VALUES (?, ?, ?, ?, ?, ?)",
        (new_event_id(), job_id, kind, now, json.dumps(data, separators=(",", ":")), row["created_by"]),
    )


def row_to_event(row: Any) -> OutboxEvent:
    return OutboxEvent(seq=int(row["seq"]), id=row["id"], type=row["type"], job_id=row["job_id"],
                       created_at=row["created_at"], data=json.loads(row["data"]), created_by=row["created_by"])


def events_after(
    after: int, limit: int, job_id: str | None = None, types: frozenset[str] | None = None,
    created_by: str | None = None,
) -> Op[list[OutboxEvent]]:
    where = ["seq > ?"]
    args: list[object] = [after]
    if created_by is not None:
        where.append("created_by = ?")
        args.append(created_by)
    if job_id is not None:
        where.append("job_id = ?")
        args.append(job_id)
    if types is not None:
        ordered = sorted(types)
        where.append(f"type IN ({marks(ordered)})")
        args += ordered
    rows = yield Query(f"SELECT * FROM outbox WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                       (*args, limit), "all")
    return [row_to_event(r) for r in rows]


def last_seq() -> Op[int]:
    row = yield Query("SELECT COALESCE(MAX(seq), 0) FROM outbox", (), "one")
    return int(row[0])


def prune_outbox(before: float, limit: int, idempotent_before: float) -> Op[int]:
    """Delete up to `limit` events created before `before`, with their deliveries and attempts,
    and idempotency keys older than `idempotent_before`; returns how many events went."""
    row = yield Query(
        "SELECT MAX(seq) FROM (SELECT seq FROM outbox WHERE created_at < ? ORDER BY seq LIMIT ?) AS old",
        (before, limit), "one",
    )
    yield Query("DELETE FROM idempotency WHERE created_at < ?", (idempotent_before,))
    if row is None or row[0] is None:
        return 0
    cutoff = int(row[0])
    yield Query("DELETE FROM delivery_attempts WHERE seq <= ?", (cutoff,))
    yield Query("DELETE FROM deliveries WHERE seq <= ?", (cutoff,))
    return int((yield Query("DELETE FROM outbox WHERE seq <= ?", (cutoff,))))

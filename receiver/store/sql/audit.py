"""The audit log of received callbacks (what the CLI reads: events, replay), its retention, and the
reconciliation report."""

from __future__ import annotations

import json
from typing import Any

from receiver.store.sql.plumbing import Op, Query

__all__ = ["audit_event", "audit_events", "prune_events", "reconciliation"]


def prune_events(before: float, limit: int) -> Op[int]:
    count = yield Query(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < ? ORDER BY received_at LIMIT ?)",
        (before, limit),
    )
    return int(count)


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


def reconciliation(since: float | None, created_by: str | None = None) -> Op[list[dict[str, Any]]]:
    """One row per job created since `since` (by the API key named `created_by`, if given): what
    `fluxhook report` counts."""
    args: tuple[object, ...] = (since if since is not None else -1e300,)
    mine = ""
    if created_by is not None:
        mine, args = " AND j.created_by = ?", (*args, created_by)
    rows = yield Query(
        "SELECT j.id, j.provider, j.status, j.provider_job_id, j.callback_at, j.polls, j.error, j.submitted_at,"
        " (SELECT COUNT(*) FROM files f WHERE f.job_id = j.id),"
        " (SELECT COUNT(*) FROM files f WHERE f.job_id = j.id AND f.path IS NOT NULL),"
        " (SELECT COUNT(*) FROM outbox o WHERE o.job_id = j.id AND o.type = 'job.stored'),"
        " (SELECT COUNT(*) FROM events e WHERE e.job_id = j.id)"
        f" FROM jobs j WHERE j.created_at >= ?{mine} ORDER BY j.created_at, j.id",
        args, "all",
    )
    keys = ("id", "provider", "status", "provider_job_id", "callback_at", "polls", "error", "submitted_at",
            "files", "stored_files", "stored_events", "callbacks")
    return [dict(zip(keys, r, strict=True)) for r in rows]

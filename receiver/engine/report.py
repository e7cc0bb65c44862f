"""The reconciliation report: what `fluxhook report` and `GET /v1/report` show.

Per provider, then a total: what was submitted, stored, lost and how (README, "`fluxhook report`").
"""

from __future__ import annotations

from typing import Any

from receiver.engine.runtime import Runtime
from receiver.store import iso

__all__ = ["COLUMNS", "ORPHANS_NOTE", "reconcile", "report"]

COLUMNS = ("provider", "jobs", "submitted", "stored", "failed_by_provider", "moderated", "failed_download",
           "expired_before_download", "expired", "canceled", "in_progress", "paid_not_delivered",
           "delivered_twice", "rescued_by_poll", "callbacks_kept")

ORPHANS_NOTE = "not recorded: a verified callback for an unknown job is answered 404 and kept nowhere"


def reconcile(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per provider (and a `total` row): what was submitted, stored, lost and how."""
    out: dict[str, dict[str, Any]] = {}

    def bump(provider: str, key: str, n: int = 1) -> None:
        for name in (provider, "total"):
            row = out.setdefault(name, {c: 0 for c in COLUMNS} | {"provider": name})
            row[key] += n

    for r in rows:
        p, status, had_result = r["provider"], r["status"], r["files"] > 0
        bump(p, "jobs")
        bump(p, "callbacks_kept", int(r["callbacks"]))
        if r["provider_job_id"] or r["submitted_at"] is not None:
            bump(p, "submitted")
        if status == "stored":
            bump(p, "stored")
            if r["callback_at"] is None and r["polls"] > 0:
                bump(p, "rescued_by_poll")
        elif status == "failed":
            bump(p, "failed_download" if had_result else "failed_by_provider")
        elif status == "moderated":
            bump(p, "moderated")
        elif status == "expired":
            bump(p, "expired_before_download" if had_result else "expired")
        elif status == "canceled":
            bump(p, "canceled")
        else:
            bump(p, "in_progress")
        if had_result and status in ("failed", "expired") and r["stored_files"] < r["files"]:
            bump(p, "paid_not_delivered")  # the provider delivered (and billed); we have no file
        if r["stored_events"] > 1:
            bump(p, "delivered_twice")
    total = out.pop("total", None)
    return [out[k] for k in sorted(out)] + ([total] if total else [])


async def report(rt: Runtime, since: float | None, *, created_by: str | None = None) -> dict[str, Any]:
    """The report of the jobs created since `since` (of one API key's jobs with `created_by`), as JSON:
    `since` (ISO 8601 or null), `providers` (:func:`reconcile`'s rows) and the orphan callbacks, which
    are not recorded (null, and a note saying why)."""
    rows = reconcile(await rt.store.reconciliation(since, created_by=created_by))
    return {"since": iso(since), "providers": rows, "orphan_callbacks": None, "orphan_callbacks_note": ORPHANS_NOTE}

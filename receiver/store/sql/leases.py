"""Leases: claiming due jobs (several replicas never hold the same one), renewing and releasing them."""

from __future__ import annotations

from receiver.store.models import Job
from receiver.store.sql.plumbing import Op, Query
from receiver.store.sql.rows import QUEUED_SQL, SUCCEEDED_SQL, TERMINAL_SQL, row_to_job
from submitter.status import Status

__all__ = ["claim_due", "mark_sending", "release", "renew"]


_CLAIM_ORDER = "download_by IS NULL, download_by, next_check_at"


_KINDS = {None: "", True: f" AND status = {SUCCEEDED_SQL}", False: f" AND status <> {SUCCEEDED_SQL}"}


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


def mark_sending(job_id: str, sending: bool) -> Op[None]:
    yield Query(f"UPDATE jobs SET sending = ? WHERE id = ? AND status = {QUEUED_SQL}", (int(sending), job_id))


def renew(job_id: str, owner: str, until: float) -> Op[bool]:
    changed = yield Query("UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ?", (until, job_id, owner))
    return bool(changed == 1)


def release(job_id: str, owner: str, expect: Status | None, next_check_at: float | None, polled: bool) -> Op[None]:
    # If someone else (a callback) moved the job while we held it, their schedule wins.
    yield Query(
        f"""UPDATE jobs SET lease_owner = NULL, lease_until = NULL, polls = polls + ?,
            next_check_at = CASE WHEN status IN ({TERMINAL_SQL}) THEN NULL
                                 WHEN status = ? THEN ? ELSE next_check_at END
        WHERE id = ? AND lease_owner = ?""",
        (int(polled), str(expect) if expect else None, next_check_at, job_id, owner),
    )

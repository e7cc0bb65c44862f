"""Jobs: creating (once per idempotency key), reading, counting, notes and their result files."""

from __future__ import annotations

import json

from receiver.store.inputs import split_params
from receiver.store.models import FileRecord, IdempotencyConflict, Job
from receiver.store.sql.inputs import store_inputs
from receiver.store.sql.plumbing import Op, Query
from receiver.store.sql.rows import row_to_file, row_to_job
from submitter.status import Status

__all__ = [
    "counts", "create_job", "create_job_once", "file_failed", "files", "get_job", "list_jobs", "listing_filter",
    "note_repoll", "ping", "set_note", "status_of", "store_file", "update_download_by",
]


def create_job(job: Job) -> Op[None]:
    """Insert the job, its large inputs (receiver/store/inputs.py) beside it: more than one statement
    then, so the caller runs this in a transaction when :func:`~receiver.store.inputs.split_params` finds any."""
    params, large = split_params(job.params)
    yield Query(
        "INSERT INTO jobs (id, provider, model, params, options, metadata, status, created_at, deadline_at,"
        " updated_at, next_check_at, lease_owner, lease_until, created_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job.id, job.provider, job.model, json.dumps(params), json.dumps(job.options), json.dumps(job.metadata),
         str(job.status), job.created_at, job.deadline_at, job.created_at, job.next_check_at, job.lease_owner,
         job.lease_until, job.created_by),
    )
    if large:
        yield from store_inputs(job.id, large, job.created_at)


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


def listing_filter(
    status: Status | None, provider: str | None, before: tuple[float, str] | None, created_by: str | None = None,
) -> tuple[str, list[object]]:
    """The WHERE clause (with its leading space, or "") and its arguments every listing of jobs shares:
    :func:`list_jobs` and the summaries (receiver/store/sql/listing.py); `created_by`: one API key's jobs."""
    where: list[str] = []
    args: list[object] = []
    if created_by is not None:
        where.append("created_by = ?")
        args.append(created_by)
    if status is not None:
        where.append("status = ?")
        args.append(str(status))
    if provider is not None:
        where.append("provider = ?")
        args.append(provider)
    if before is not None:
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args += [before[0], before[0], before[1]]
    return (f" WHERE {' AND '.join(where)}" if where else ""), args


def list_jobs(
    status: Status | None, limit: int, provider: str | None = None, before: tuple[float, str] | None = None,
    created_by: str | None = None,
) -> Op[list[Job]]:
    """Newest first by (created_at, id); `before` is the last row of the previous page (keyset paging);
    with `created_by`, only the jobs that API key created."""
    clause, args = listing_filter(status, provider, before, created_by)
    rows = yield Query(f"SELECT * FROM jobs{clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                       (*args, limit), "all")
    return [row_to_job(r) for r in rows]


def files(job_id: str) -> Op[list[FileRecord]]:
    rows = yield Query("SELECT * FROM files WHERE job_id = ? ORDER BY n", (job_id,), "all")
    return [row_to_file(r) for r in rows]


def status_of(job_id: str) -> Op[Status | None]:
    row = yield Query("SELECT status FROM jobs WHERE id = ?", (job_id,), "one")
    return Status(row[0]) if row is not None else None


def counts() -> Op[dict[str, int]]:
    rows = yield Query("SELECT status, COUNT(*) FROM jobs GROUP BY status", (), "all")
    return {r[0]: int(r[1]) for r in rows}


def ping() -> Op[None]:
    yield Query("SELECT 1", (), "one")


def set_note(job_id: str, note: str | None, now: float) -> Op[None]:
    yield Query("UPDATE jobs SET note = ?, updated_at = ? WHERE id = ?", (note, now, job_id))


def note_repoll(job_id: str) -> Op[None]:
    yield Query("UPDATE jobs SET repolls = repolls + 1, polls = polls + 1 WHERE id = ?", (job_id,))


def update_download_by(job_id: str) -> Op[None]:
    yield Query(
        "UPDATE jobs SET download_by = (SELECT MIN(expires_at) FROM files WHERE job_id = ? AND path IS NULL)"
        " WHERE id = ?",
        (job_id, job_id),
    )


def store_file(job_id: str, n: int, path: str, size: int, sha256: str, content_type: str) -> Op[None]:
    # Lock order is jobs row, then files rows, in every transaction that takes both (apply does):
    # the other order deadlocks against a callback bringing URLs while a replica stores a file.
    yield Query("UPDATE jobs SET download_by = download_by WHERE id = ?", (job_id,))
    yield Query(
        "UPDATE files SET path = ?, size = ?, sha256 = ?, content_type = ?, attempts = attempts + 1"
        " WHERE job_id = ? AND n = ? AND path IS NULL",
        (path, size, sha256, content_type, job_id, n),
    )
    yield from update_download_by(job_id)


def file_failed(job_id: str, n: int) -> Op[None]:
    yield Query("UPDATE files SET attempts = attempts + 1 WHERE job_id = ? AND n = ?", (job_id, n))

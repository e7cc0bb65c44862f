"""Large inputs (receiver/store/inputs.py): stored once by sha256 in the creating transaction, and put
back into a job's params for its submit request. Nothing deletes a stored input: jobs are never deleted,
and an input may be shared by any number of them (`job_inputs` names each use)."""

from __future__ import annotations

import json
from typing import Any

from receiver.store.inputs import LargeInput, put_back
from receiver.store.sql.plumbing import Op, Query

__all__ = ["job_params", "store_inputs"]


def store_inputs(job_id: str, items: list[LargeInput], now: float) -> Op[None]:
    """Keep each value once (a value already stored by another job is not written again) and name its use
    by this job. Runs in the transaction that inserts the job."""
    for item in items:
        yield Query(
            "INSERT INTO inputs (sha256, size, type, data, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (sha256) DO NOTHING",
            (item.sha256, item.size, item.type, item.data, now),
        )
    yield Query(
        "INSERT INTO job_inputs (job_id, path, sha256) VALUES (?, ?, ?)",
        tuple((job_id, item.path_json, item.sha256) for item in items), "many",
    )


def job_params(job_id: str) -> Op[dict[str, Any] | None]:
    """The job's params as they were given: every stored input back in its place (None: no such job)."""
    row = yield Query("SELECT params FROM jobs WHERE id = ?", (job_id,), "one")
    if row is None:
        return None
    params: dict[str, Any] = json.loads(row[0])
    values = yield Query(
        "SELECT j.path, i.data FROM job_inputs j JOIN inputs i ON i.sha256 = j.sha256 WHERE j.job_id = ?",
        (job_id,), "all",
    )
    return put_back(params, [(path, data) for path, data in values])

"""Rows to records, and the status lists statements use: every status name a statement spells
comes from :mod:`submitter.status` (its sets and transition rules), nowhere else."""

from __future__ import annotations

import json
from typing import Any

from receiver.store.models import FileRecord, Job
from submitter.status import ACTIVE, TERMINAL, Status, can_follow, predecessors

__all__ = [
    "ACTIVE_SQL", "GAVE_UP_SQL", "QUEUED_SQL", "SUBMIT_FROM_SQL", "SUCCEEDED_SQL", "TERMINAL_SQL", "earliest",
    "row_to_file", "row_to_job", "status_list",
]


_JOB_FIELDS = frozenset(Job.__dataclass_fields__)


TERMINAL_SQL = ",".join(f"'{s}'" for s in sorted(TERMINAL))


ACTIVE_SQL = ",".join(f"'{s}'" for s in sorted(ACTIVE))


def status_list(statuses: frozenset[Status]) -> str:
    return ",".join(f"'{s}'" for s in sorted(statuses)) or "NULL"


#: Every status name a statement spells comes from submitter.status: its sets, its transition rules.
QUEUED_SQL = f"'{Status.QUEUED}'"


SUCCEEDED_SQL = f"'{Status.SUCCEEDED}'"


#: Where a submit answer moves a job from (queued).
SUBMIT_FROM_SQL = status_list(predecessors(Status.SUBMITTED))


#: What our download path may end a succeeded job in, short of storing it (failed, expired): the
#: statuses `fluxhook retry` reopens.
GAVE_UP_SQL = status_list(frozenset(s for s in Status if can_follow(Status.SUCCEEDED, s)) - {Status.STORED})


def earliest(a: float | None, b: float | None) -> float | None:
    """Like SQLite's two-argument MIN: None if either is None."""
    return None if a is None or b is None else min(a, b)


def row_to_job(row: Any) -> Job:
    data = {k: row[k] for k in row.keys() if k in _JOB_FIELDS}
    data["params"] = json.loads(data["params"])
    data["options"] = json.loads(data["options"])
    data["outputs"] = tuple(json.loads(data["outputs"])) if data["outputs"] else ()
    data["metadata"] = json.loads(data["metadata"])
    data["status"] = Status(data["status"])
    data["slot_held"] = bool(data["slot_held"])
    data["sending"] = bool(data["sending"])
    return Job(**data)


def row_to_file(row: Any) -> FileRecord:
    return FileRecord(**{k: row[k] for k in row.keys()})

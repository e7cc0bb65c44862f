"""The job state machine: one place that says which status may follow which.

    queued -> submitted -> running -> succeeded -> stored
       \\________\\___________\\____________\\----> failed | moderated | expired | canceled

Progress is monotonic. A job may skip forward (a `Ready` callback can race the
submit response, so `queued -> succeeded` is legal) but never moves back, and a
terminal status is final. The store applies these rules with conditional
updates, so two writers cannot race past them.

Two kinds of writer, two rules. What the provider *observes* (a callback or a
poll answer) moves a job up to `succeeded` and no further: once it reported a
result, a later `Error`, a `failed` snapshot or `data_removed` cannot abandon the
paid files (:func:`can_observe`). Only our own handling of the files ends a
succeeded job: `stored`, or `failed` / `expired` when the download path gives up
(:func:`can_follow`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE", "TERMINAL", "Status", "can_follow", "can_observe", "observed_predecessors", "predecessors"]


class Status(StrEnum):
    #: Recorded in the ledger; the provider has not (knowingly) accepted it yet.
    QUEUED = "queued"
    #: The provider accepted it (or may have: see `Job.note`).
    SUBMITTED = "submitted"
    #: The provider reported progress.
    RUNNING = "running"
    #: The provider reported a result; files are not all stored yet.
    SUCCEEDED = "succeeded"
    #: Every result file is stored locally. Final.
    STORED = "stored"
    #: The provider reported an error, or a result could not be kept. Final.
    FAILED = "failed"
    #: The provider refused the prompt or the output. Final.
    MODERATED = "moderated"
    #: The deadline passed, or result URLs expired before we could fetch them. Final.
    EXPIRED = "expired"
    #: Canceled by the user or the provider. Final.
    CANCELED = "canceled"


_PROGRESS = (Status.QUEUED, Status.SUBMITTED, Status.RUNNING, Status.SUCCEEDED, Status.STORED)
_RANK = {status: rank for rank, status in enumerate(_PROGRESS)}

TERMINAL: frozenset[Status] = frozenset(
    {Status.STORED, Status.FAILED, Status.MODERATED, Status.EXPIRED, Status.CANCELED}
)
#: Submitted to the provider and not finished there: what counts against a concurrency cap.
ACTIVE: frozenset[Status] = frozenset({Status.SUBMITTED, Status.RUNNING})


def can_follow(current: Status, new: Status) -> bool:
    """True if a job in `current` may move to `new`."""
    if current in TERMINAL or new == current:
        return False
    if new == Status.STORED:
        return current == Status.SUCCEEDED
    if current == Status.SUCCEEDED:
        # Once the provider delivered, only our own handling of the files can end the job.
        return new in (Status.FAILED, Status.EXPIRED)
    if new in TERMINAL:
        return True
    return _RANK[new] > _RANK[current]


def can_observe(current: Status, new: Status) -> bool:
    """True if a provider's report of `new` (callback or poll) may move a job in `current`.

    Providers never report `stored`, and from `succeeded` nothing they say ends the job:
    a repeat may bring fresh URLs (applied as information), never a new status."""
    return current != Status.SUCCEEDED and new != Status.STORED and can_follow(current, new)


def observed_predecessors(new: Status) -> frozenset[Status]:
    """Every status from which a provider's report of `new` may move a job."""
    return frozenset(s for s in Status if can_observe(s, new))


def predecessors(new: Status) -> frozenset[Status]:
    """Every status from which `new` may be reached: the store's `WHERE status IN (...)`."""
    return frozenset(s for s in Status if can_follow(s, new))

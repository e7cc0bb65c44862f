"""Status changes: every one a conditional update derived from :mod:`submitter.status`, and each
writes its outbox event (:func:`receiver.store.sql.outbox.emit`) in the same transaction."""

from __future__ import annotations

import json
from collections.abc import Callable

from receiver.store.models import Event, Outcome, TaskMismatch
from receiver.store.sql.jobs import status_of, update_download_by
from receiver.store.sql.outbox import emit
from receiver.store.sql.plumbing import Lock, Op, Query, UniqueViolation
from receiver.store.sql.rows import (
    ACTIVE_SQL,
    GAVE_UP_SQL,
    QUEUED_SQL,
    SUBMIT_FROM_SQL,
    earliest,
    status_list,
)
from submitter.bodies import Observation
from submitter.status import TERMINAL, Status, observed_predecessors, predecessors

__all__ = ["RETRY_NOTE", "apply", "defer", "finish", "record_submit", "reopen_for_retry", "reserve_slot"]


def reserve_slot(job_id: str, cap: int, model_cap: int, now: float) -> Op[bool]:
    # One statement, and reservations serialised: the counts and the reservation cannot interleave.
    yield Lock("fluxhook-slots")
    active = f"(o.status IN ({ACTIVE_SQL}) OR (o.status = {QUEUED_SQL} AND o.slot_held = 1))"
    changed = yield Query(
        f"""UPDATE jobs SET slot_held = 1, submit_attempts = submit_attempts + 1, updated_at = ?
        WHERE id = ? AND status = {QUEUED_SQL} AND slot_held = 0
          AND (SELECT COUNT(*) FROM jobs AS o WHERE o.provider = jobs.provider AND {active}) < ?
          AND (SELECT COUNT(*) FROM jobs AS o WHERE o.provider = jobs.provider
               AND o.model = jobs.model AND {active}) < ?""",
        (now, job_id, cap, model_cap),
    )
    return bool(changed == 1)


def record_submit(
    job_id: str, provider_job_id: str | None, polling_url: str | None, now: float, next_check_at: float | None,
    note: str | None,
) -> Op[Outcome]:
    before = yield Query("SELECT provider_job_id, next_check_at FROM jobs WHERE id = ?", (job_id,), "one")
    # The ids are kept even when a callback already moved the job on (it raced this answer).
    yield Query(
        "UPDATE jobs SET provider_job_id = COALESCE(provider_job_id, ?),"
        " polling_url = COALESCE(polling_url, ?), submitted_at = COALESCE(submitted_at, ?),"
        " note = COALESCE(?, note), slot_held = 0, sending = 0, updated_at = ? WHERE id = ?",
        (provider_job_id, polling_url, now, note, now, job_id),
    )
    changed = (yield Query(
        f"UPDATE jobs SET status = ?, next_check_at = ? WHERE id = ? AND status IN ({SUBMIT_FROM_SQL})",
        (str(Status.SUBMITTED), next_check_at, job_id),
    )) == 1
    if not changed and before is not None and before[0] is None and provider_job_id is not None:
        # The answer comes after the job was reconciled as "outcome unknown" (waiting for the
        # deadline): now that it can be polled, poll it on the normal schedule.
        current = before[1] if before[1] is not None else next_check_at
        yield Query(
            f"UPDATE jobs SET next_check_at = ? WHERE id = ? AND status IN ({ACTIVE_SQL})",
            (earliest(current, next_check_at), job_id),
        )
    if changed:
        yield from emit(job_id, Status.SUBMITTED, now)
    status = yield from status_of(job_id)
    return Outcome(changed=changed, status=status, found=status is not None)


def defer(job_id: str, next_check_at: float, note: str | None, now: float, release_slot: bool) -> Op[None]:
    yield Query(
        "UPDATE jobs SET slot_held = CASE WHEN ? = 1 THEN 0 ELSE slot_held END, sending = 0, next_check_at = ?,"
        f" note = ?, updated_at = ? WHERE id = ? AND status = {QUEUED_SQL}",
        (int(release_slot), next_check_at, note, now, job_id),
    )


def apply(
    job_id: str, observation: Observation, now: float, next_check_at: float | None, event: Event | None,
    expires: tuple[float, ...], keep_events: int | None,
) -> Op[Outcome]:
    # One round trip: the job and (for the audit cap) how many events it keeps already.
    row = yield Query(
        "SELECT status, provider_job_id, deadline_at,"
        " CASE WHEN ? = 1 THEN (SELECT COUNT(*) FROM events WHERE job_id = ?) ELSE 0 END"
        " FROM jobs WHERE id = ? {for_update}",
        (int(event is not None and keep_events is not None), job_id, job_id), "one",
    )
    if row is None:
        return Outcome(found=False)
    current, task, deadline, kept = Status(row[0]), row[1], row[2], row[3]
    if task and observation.provider_job_id and observation.provider_job_id != task:
        raise TaskMismatch(f"event names provider task {observation.provider_job_id!r}, the job has another")
    if current in TERMINAL:
        return Outcome(status=current)  # finished: nothing to change, nothing more to keep
    if event is not None and keep_events is not None and kept >= keep_events:
        event = None  # the audit cap for this job is reached: apply, but keep no more
    recorded = event is not None
    if event is not None:
        inserted = yield Query(
            "INSERT INTO events (job_id, provider, dedup_key, received_at, headers, body, verdict)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING",
            (event.job_id, event.provider, event.dedup_key, event.received_at,
             event.headers_json, event.body, event.verdict),
        )
        if not inserted:
            return Outcome(duplicate=True, status=current)
    new = observation.status
    changed = False
    # When a verified callback last arrived: set by whichever update below writes the row.
    stamp = now if event is not None else None
    stamped = stamp is None
    if new is not None and new != current:
        changed = (yield Query(
            f"UPDATE jobs SET status = ?, error = COALESCE(?, error), progress = COALESCE(?, progress),"
            f" updated_at = ?, next_check_at = ?, slot_held = 0, sending = 0, callback_at = COALESCE(?, callback_at)"
            f" WHERE id = ? AND status IN ({status_list(observed_predecessors(new))})",
            (str(new), observation.reason, observation.progress, now,
             None if new in TERMINAL else earliest(next_check_at, deadline), stamp, job_id),
        )) == 1
        stamped = stamped or changed
    elif new is not None and new not in TERMINAL and new == current != Status.SUCCEEDED:
        # Same progress again (a new callback or poll): note it and reschedule.
        yield Query(
            "UPDATE jobs SET progress = COALESCE(?, progress), updated_at = ?, next_check_at = ?,"
            " callback_at = COALESCE(?, callback_at) WHERE id = ?",
            (observation.progress, now, earliest(next_check_at, deadline), stamp, job_id),
        )
        stamped = True
    if not stamped:
        yield Query("UPDATE jobs SET callback_at = ? WHERE id = ?", (stamp, job_id))
    if observation.provider_job_id and not task:
        # The provider's task id, if the submit answer has not brought it yet (the row was read under
        # the write lock). Only then: an UPDATE naming provider_job_id rewrites its unique index entry
        # even when the value stays the same.
        try:
            yield Query("UPDATE jobs SET provider_job_id = COALESCE(provider_job_id, ?) WHERE id = ?",
                        (observation.provider_job_id, job_id))
        except UniqueViolation:
            raise TaskMismatch(f"provider task {observation.provider_job_id!r} belongs to another job") from None
    status = new if changed else current
    if (changed or new == current) and (observation.logs or observation.urls):
        # Progress as the provider reports it: the log tail and the outputs so far (no downloads yet).
        yield Query(
            "UPDATE jobs SET logs = COALESCE(?, logs), outputs = COALESCE(?, outputs) WHERE id = ?",
            (observation.logs, json.dumps(observation.urls) if observation.urls else None, job_id),
        )
    if observation.urls and status == Status.SUCCEEDED:
        # Fresh URLs (a re-poll after expiry) replace stale ones for files not yet stored.
        yield Query(
            "INSERT INTO files (job_id, n, url, expires_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (job_id, n) DO UPDATE SET url = excluded.url, expires_at = excluded.expires_at"
            " WHERE files.path IS NULL",
            tuple((job_id, n, url, at) for n, (url, at) in enumerate(zip(observation.urls, expires, strict=True))),
            "many",
        )
        yield from update_download_by(job_id)
        yield Query("UPDATE jobs SET next_check_at = ? WHERE id = ?", (now, job_id))
    if changed and new is not None:  # (changed implies new)
        yield from emit(job_id, new, now)
    return Outcome(changed=changed, status=status, recorded=recorded)


#: The note a job reopened by `fluxhook retry` carries until it is stored (then it is history, not news).
RETRY_NOTE = "reopened for a download retry (fluxhook retry)"


def finish(
    job_id: str, status: Status, now: float, reason: str | None, only_from: frozenset[Status] | None,
    locate: Callable[[str], str] | None = None,
) -> Op[Outcome]:
    allowed = predecessors(status) if only_from is None else predecessors(status) & only_from
    # Stored: a retry's note is done with (a retry that fails again keeps it, beside the new error).
    cleared = RETRY_NOTE if status == Status.STORED else None
    changed = (yield Query(
        f"UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ?, next_check_at = NULL,"
        f" slot_held = 0, sending = 0, download_by = NULL,"
        f" note = CASE WHEN note = ? THEN NULL ELSE note END WHERE id = ? AND status IN ({status_list(allowed)})",
        (str(status), reason, now, cleared, job_id),
    )) == 1
    if changed:
        yield from emit(job_id, status, now, locate)
    current = yield from status_of(job_id)
    return Outcome(changed=changed, status=current, found=current is not None)


def reopen_for_retry(job_id: str, now: float, store_until: float) -> Op[bool]:
    """Move a job that ended `failed` or `expired` in OUR download path back to `succeeded`, so the
    download pass tries its files again (re-polling the provider for fresh URLs when they expired).

    The one sanctioned exception to "a terminal status is final", and only where it cannot undo
    anything the provider said: the job must have a provider task, result file rows (written only
    when the provider reported a result, so the job was `succeeded` and the provider's word can no
    longer end it) and at least one file not stored. `deadline_at` is moved so that the download
    window (`store_by`) covers the retry: `store_until` minus the window, computed by the caller.
    Writes nothing to the outbox (`succeeded` has no event); the job's next end writes its event
    (a second terminal event for the job: consumers see e.g. job.failed, then job.stored)."""
    changed = yield Query(
        "UPDATE jobs SET status = ?, error = NULL,"
        " note = ?, repolls = 0, next_check_at = ?,"
        " deadline_at = CASE WHEN deadline_at < ? THEN ? ELSE deadline_at END, updated_at = ?,"
        " lease_owner = NULL, lease_until = NULL"
        f" WHERE id = ? AND status IN ({GAVE_UP_SQL}) AND provider_job_id IS NOT NULL"
        " AND EXISTS (SELECT 1 FROM files WHERE files.job_id = jobs.id AND files.path IS NULL)",
        (str(Status.SUCCEEDED), RETRY_NOTE, now, store_until, store_until, now, job_id),
    )
    if changed == 1:
        yield Query("UPDATE files SET attempts = 0 WHERE job_id = ? AND path IS NULL", (job_id,))
        yield from update_download_by(job_id)
    return bool(changed == 1)

"""A job's timeline: what `fluxhook events JOB` and `GET /v1/jobs/{id}/timeline` show.

Its creation and submit, each kept callback (with its audit id, for `fluxhook replay`, and its verdict),
each outbox event and, for operators, each delivery of it to a sink. Times are epoch seconds; each
caller shows them as ISO 8601.
"""

from __future__ import annotations

from typing import Any

from receiver.engine.runtime import Runtime
from receiver.store import Job
from submitter.bodies import BodyError, loads_object
from submitter.dialects import parse_observation

__all__ = ["callback_status", "timeline"]


def callback_status(rt: Runtime, provider: str, body: bytes) -> str | None:
    """What a kept callback body said, read the way the receiver reads it (None if unreadable)."""
    try:
        observation = parse_observation(rt.settings.provider(provider).dialect, loads_object(body))
    except (BodyError, KeyError, ValueError):
        return None
    return str(observation.status) if observation.status is not None else None


async def timeline(rt: Runtime, job: Job, *, deliveries: bool = True) -> list[dict[str, Any]]:
    """Everything known about `job`, in time order: rows of `at` (epoch seconds), `kind` (created,
    submitted, callback, event, delivery), `detail` and, for callbacks and events, `id`. Without
    `deliveries`, no delivery rows: which sinks the operator runs, and how they answer, are the
    operator's to know (an API key of the scope `submit` sees its job's timeline without them)."""
    rows: list[dict[str, Any]] = [{"at": job.created_at, "kind": "created", "detail": f"{job.provider} {job.model}"}]
    if job.submitted_at is not None:
        rows.append({"at": job.submitted_at, "kind": "submitted",
                     "detail": f"provider task {job.provider_job_id or '(unknown: submit outcome unknown)'}"})
    for e in await rt.store.audit_events(job.id):
        said = callback_status(rt, e["provider"], e["body"])
        rows.append({"at": e["received_at"], "kind": "callback", "id": e["id"],
                     "detail": f"{e['verdict']}; said {said or '(unreadable)'}"})
    sinks = {s.name: s.display for s in await rt.store.sinks()} if deliveries else {}
    for ev in await rt.store.events_after(0, limit=10_000, job_id=job.id):
        rows.append({"at": ev.created_at, "kind": "event", "id": ev.id, "detail": ev.type})
        if not deliveries:
            continue
        for d in await rt.store.deliveries(None, limit=1000, event_id=ev.id):
            when = d.delivered_at or d.next_at or d.created_at
            last = d.last_code or d.last_error or "-"
            rows.append({"at": when, "kind": "delivery", "id": ev.id,
                         "detail": f"-> {sinks.get(d.sink, d.sink)} {d.state} attempts={d.attempts} last={last}"})
    rows.sort(key=lambda r: (r["at"], r["kind"] != "created"))
    return rows

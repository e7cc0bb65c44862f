"""The job table at `/ui/jobs` (filter, search by id, keyset pages), each job's page with its timeline,
and the result files the pages show (`/ui/jobs/{job_id}/files/{n}`)."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from receiver.config.keys import Scope
from receiver.engine.retry import GAVE_UP
from receiver.store import FileRecord
from receiver.store.inputs import references
from receiver.web.files import result_response, stored_file
from receiver.web.ui.actions import job_path, outcome_message
from receiver.web.ui.csrf import csrf_token
from receiver.web.ui.pages import (
    JOB_ID,
    alt_text,
    caller,
    cursor_of,
    file_url,
    page,
    parse_cursor,
    prompt_of,
    render,
    resource,
    runtime,
)
from submitter.status import TERMINAL, Status

__all__ = ["job_page", "job_table", "result_file"]

PAGE_SIZE = 50
#: A callback's body is shown up to this many characters.
BODY_SHOWN = 16_384
_FILE_N = re.compile(r"[0-9]{1,6}")


@page
async def job_table(request: Request) -> Response:
    rt = runtime(request)
    providers = sorted(rt.settings.providers)
    statuses = [str(s) for s in Status]
    status_raw = request.query_params.get("status") or ""
    provider_raw = request.query_params.get("provider") or ""
    q = (request.query_params.get("q") or "").strip()
    problems = []
    status = Status(status_raw) if status_raw in statuses else None
    if status_raw and status is None:
        problems.append("unknown status")
    provider = provider_raw if provider_raw in providers else None
    if provider_raw and provider is None:
        problems.append("unknown provider")
    before = parse_cursor(request.query_params.get("before"))
    older = None
    if q:
        found = await rt.store.get_summary(q) if JOB_ID.fullmatch(q) else None
        jobs = [found] if found is not None and caller(request).may_see(found.created_by) and (
            status is None or found.status == status) and (provider is None or found.provider == provider) else []
    elif problems:
        jobs = []
    else:
        jobs = await rt.store.job_summaries(status, PAGE_SIZE, provider=provider, before=before,
                                            created_by=caller(request).owner_filter())
        if len(jobs) == PAGE_SIZE:
            older = "/ui/jobs?" + urlencode({k: v for k, v in (("status", status_raw), ("provider", provider_raw),
                                                               ("before", cursor_of(jobs[-1]))) if v})
    return render(request, "jobs.html", {
        "title": "Jobs", "jobs": jobs, "statuses": statuses, "providers": providers, "status": status_raw,
        "provider": provider_raw, "q": q, "problems": problems, "older": older, "prompt_of": prompt_of,
    }, 422 if problems else 200)


@page
async def job_page(request: Request) -> Response:
    rt = runtime(request)
    key = caller(request)
    job_id = request.path_params["job_id"]
    job = await rt.store.get_job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or not key.may_see(job.created_by):
        return render(request, "error.html", {"title": "Not found", "message": "no such job"}, 404)
    timeline: list[dict[str, Any]] = [
        {"at": job.created_at, "what": "created", "detail": f"{job.provider} {job.model}"},
    ]
    if job.submitted_at is not None:
        timeline.append({"at": job.submitted_at, "what": "submitted",
                         "detail": f"provider job {job.provider_job_id}" if job.provider_job_id else ""})
    # Callbacks as stored: their secrets (tokens, signatures) were removed before they were written.
    for event in await rt.store.audit_events(job.id, limit=200):
        timeline.append({"at": event["received_at"], "what": "callback received",
                         "detail": f"verdict: {event['verdict']}", "body": body_text(event["body"])})
    sinks = {s.name: s for s in await rt.store.sinks()} if key.operates else {}
    for outbox in await rt.store.events_after(0, job_id=job.id):
        # The operator's sinks, and each attempt at them, are for operator keys only (as on /v1 .../timeline).
        deliveries = [
            {"d": d, "sink": sinks[d.sink].display if d.sink in sinks else d.sink,
             "disabled": d.sink in sinks and sinks[d.sink].disabled_at is not None,
             "attempts": await rt.store.delivery_attempts(d.id)}
            for d in (await rt.store.deliveries(event_id=outbox.id) if key.operates else ())
        ]
        timeline.append({"at": outbox.created_at, "what": f"event {outbox.type}", "detail": outbox.id,
                         "event": outbox.id, "deliveries": deliveries})
    timeline.sort(key=lambda item: item["at"])
    files: list[FileRecord] = await rt.store.files(job.id)
    images = [{"n": f.n, "src": file_url(job.id, f.n), "alt": alt_text(job, f.n), "size": f.size,
               "content_type": f.content_type, "sha256": f.sha256} for f in files if f.stored]
    # Large inputs are kept beside the job (receiver/store/inputs.py): its params show each as a reference.
    inputs = [{"field": ".".join(map(str, path)), **ref} for path, ref in references(job.params)]
    return render(request, "job.html", {
        "title": f"Job {job.id}", "job": job, "timeline": timeline, "images": images, "prompt": prompt_of(job),
        "inputs": inputs, "path": job_path(job.id), "csrf": csrf_token(request), "writes": key.writes,
        "admin": key.scope == Scope.ADMIN, "retryable": job.status in GAVE_UP and any(not f.stored for f in files),
        "cancelable": job.status not in TERMINAL, "message": outcome_message(request.query_params),
        "metadata": json.dumps(job.metadata, indent=2, ensure_ascii=False, sort_keys=True) if job.metadata else None,
    })


def body_text(body: bytes | None) -> str:
    """A stored callback's body for the page: indented if JSON, at most BODY_SHOWN characters."""
    text = (body or b"").decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= BODY_SHOWN else text[:BODY_SHOWN] + f"\n… ({len(text) - BODY_SHOWN} more characters)"


@resource
async def result_file(request: Request) -> Response:
    rt = runtime(request)
    job_id, n = request.path_params["job_id"], request.path_params["n"]
    if not (JOB_ID.fullmatch(job_id) and _FILE_N.fullmatch(n)):
        return PlainTextResponse("not found", 404)
    key = caller(request)
    if not key.sees_all:  # a submit key: only its own jobs' files
        job = await rt.store.get_summary(job_id)
        if job is None or not key.may_see(job.created_by):
            return PlainTextResponse("not found", 404)
    record = await stored_file(rt.store, job_id, int(n))
    if record is None:
        return PlainTextResponse("not found", 404)
    return await result_response(rt.results, record)

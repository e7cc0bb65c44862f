"""`/v1` for what people do to a job after the fact: its timeline, a download retry, the reconciliation report.

The same answers as `fluxhook events`, `fluxhook retry` and `fluxhook report` on the database, so those
commands work through FLUXHOOK_API_URL too (receiver/cli/remote_ops.py). Scopes as everywhere in /v1
(receiver/config/keys.py): a `submit` key reads and retries only the jobs it created (another key's job is
404) and its report counts only them; a `read` key retries nothing (403). Deliveries to the operator's sinks
are in a timeline only for keys that operate (`admin`, `read`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.engine.report import report as build_report
from receiver.engine.retry import NotRetryable, reopen_download
from receiver.engine.runtime import Runtime
from receiver.engine.timeline import timeline as build_timeline
from receiver.store import iso
from receiver.web.api.auth import authenticate, visible, writer
from receiver.web.api.errors import ApiError, api_endpoint, invalid, not_found
from receiver.web.api.jobs import job_id_of, view
from submitter.status import Status

__all__ = ["parse_since", "report", "retry", "timeline"]


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@api_endpoint
async def timeline(request: Request) -> Response:
    rt = _rt(request)
    key = authenticate(request)
    job = visible(key, await rt.store.get_job(job_id_of(request)))
    rows = await build_timeline(rt, job, deliveries=key.operates)
    shown: list[dict[str, Any]] = [{**row, "at": iso(row["at"])} for row in rows]
    return JSONResponse({"job": await view(rt, job), "timeline": shown})


@api_endpoint
async def retry(request: Request) -> Response:
    rt = _rt(request)
    key = writer(request)
    job_id = job_id_of(request)
    job = visible(key, await rt.store.get_job(job_id))
    if job.status != Status.SUCCEEDED:  # succeeded: its files are being downloaded already (a repeated retry)
        try:
            await reopen_download(rt, job_id)
        except KeyError:
            raise not_found("unknown job") from None
        except NotRetryable as exc:
            raise ApiError(409, "not_retryable", str(exc)) from None
        job = await rt.store.get_job(job_id) or job
    return JSONResponse(await view(rt, job))


def parse_since(text: str | None) -> float | None:
    """`since` as epoch seconds: ISO 8601 (2026-01-31, 2026-01-31T12:00Z; without an offset, UTC), or None."""
    if text is None or text == "":
        return None
    problem = invalid("since", "since must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z")
    if len(text) > 64:
        raise problem
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise problem from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


@api_endpoint
async def report(request: Request) -> Response:
    rt = _rt(request)
    key = authenticate(request)
    since = parse_since(request.query_params.get("since"))
    return JSONResponse(await build_report(rt, since, created_by=key.owner_filter()))

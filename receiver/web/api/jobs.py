"""`/v1/jobs`: create (idempotent), read (with long-poll), list (keyset pages), cancel, result files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Collection
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver import store as store_mod
from receiver.config.integrations import TERMINAL_EVENTS
from receiver.config.settings import SettingsError
from receiver.engine import jobs as jobs_mod
from receiver.engine.jobs import submit_options
from receiver.engine.runtime import Runtime
from receiver.store import Job, JobSummary
from receiver.web.api.auth import authenticate, key_scope, visible, writer
from receiver.web.api.errors import ApiError, api_endpoint, invalid, not_found
from receiver.web.api.models import CURSOR_PATTERN, CreateJob, validation_error
from receiver.web.bodies import read_body
from receiver.web.files import result_response, stored_file
from receiver.web.streams import stream_limits
from submitter.bodies import BodyError, loads_object
from submitter.status import TERMINAL, Status

__all__ = ["cancel", "create", "file", "get", "listing"]

#: The contract's caps: the body of a create, and its `metadata` as compact JSON.
BODY_CAP = 256 * 1024
METADATA_CAP = 16 * 1024
MAX_WAIT = 60.0
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
_NUMBER = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3})?")
_LIMIT = re.compile(r"[0-9]{1,4}")
_FILE_N = re.compile(r"[0-9]{1,6}")
_CURSOR = re.compile(CURSOR_PATTERN)
#: `?expires=` of a file: seconds a presigned URL stays valid (S3's limit is 7 days).
DEFAULT_EXPIRES, MAX_EXPIRES = 3600, 7 * 86400


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def job_id_of(request: Request) -> str:
    """The path's job id; 404 for anything no job id can be (the store never sees such text)."""
    job_id: str = request.path_params["job_id"]
    if not (0 < len(job_id) <= 128 and job_id.isascii() and job_id.isprintable()):
        raise not_found("unknown job")
    return job_id


async def view(rt: Runtime, job: Job | JobSummary) -> dict[str, Any]:
    return await jobs_mod.job_view(rt, job)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not (1 <= len(key) <= 255 and all("!" <= c <= "~" for c in key)):
        raise ApiError(400, "invalid", "Idempotency-Key must be 1 to 255 visible ASCII characters",
                       field="Idempotency-Key")
    return key


def fingerprint(data: dict[str, Any]) -> str:
    """The request body's identity for idempotency: sha256 of its canonical JSON."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check(rt: Runtime, req: CreateJob) -> None:
    """What the models cannot say: a configured provider with its API key set, its model form, the event
    filter, the metadata cap."""
    target = rt.settings.providers.get(req.provider)
    if target is None:
        raise invalid("provider", f"unknown provider; known: {', '.join(sorted(rt.settings.providers))}")
    try:
        rt.settings.require_credentials(target.name)  # the provider would answer 401 after the job was recorded
    except SettingsError as exc:
        raise invalid("provider", str(exc)) from None
    try:
        target.dialect.check_model(req.model)
    except ValueError as exc:
        raise invalid("model", str(exc)) from None
    try:
        submit_options(target.dialect, req.model, req.events)
    except ValueError as exc:
        raise invalid("events", str(exc)) from None
    if req.metadata is not None:
        size = len(json.dumps(req.metadata, separators=(",", ":"), ensure_ascii=False).encode())
        if size > METADATA_CAP:
            raise invalid("metadata", f"metadata is {size} bytes as JSON; at most {METADATA_CAP}")


@api_endpoint
async def create(request: Request) -> Response:
    rt = _rt(request)
    api_key = writer(request)
    idempotency_key = _idempotency_key(request)
    body = await read_body(request, BODY_CAP, rt.settings.body_timeout)
    try:
        data = loads_object(body)
    except BodyError as exc:
        raise ApiError(400, "bad_json", str(exc)) from None
    try:
        req = CreateJob.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    _check(rt, req)
    idempotency = (f"{key_scope(api_key)}:{idempotency_key}", fingerprint(data)) if idempotency_key else None
    try:
        job, created = await jobs_mod.create_api_job(
            rt, req.provider, req.model, req.params, events=req.events, metadata=req.metadata,
            idempotency=idempotency, created_by=api_key.name,
        )
    except store_mod.IdempotencyConflict:
        raise ApiError(409, "idempotency_conflict",
                       "this Idempotency-Key was used with a different request body") from None
    except SettingsError as exc:
        if "unknown provider" in str(exc):
            raise invalid("provider", "unknown provider") from None
        raise ApiError(503, "unavailable", str(exc), headers={"retry-after": "60"}) from None
    except ValueError as exc:
        raise invalid("events" if req.events is not None and "event" in str(exc) else "model", str(exc)) from None
    if not created and not api_key.may_see(job.created_by):
        # The same secret under another name (a renamed submit key): the job is no longer this key's to see.
        raise ApiError(409, "idempotency_conflict", "this Idempotency-Key names a job another API key created;"
                       " use a new Idempotency-Key")
    headers = {"location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["idempotent-replayed"] = "true"
    return JSONResponse(await view(rt, job), status_code=201 if created else 200, headers=headers)


def _wait(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    if len(raw) > 40 or not _NUMBER.fullmatch(raw) or float(raw) > MAX_WAIT:
        raise invalid("wait", f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return float(raw)


async def _until_finished(rt: Runtime, job: Job, seq: int, wait: float) -> None:
    """Return when an event says `job` finished after outbox position `seq`, or after `wait` seconds."""
    stream = rt.feed.stream(seq, job_id=job.id, heartbeat=wait)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait), contextlib.aclosing(stream):
            async for event in stream:
                if event is not None and event.type in TERMINAL_EVENTS:
                    return


@api_endpoint
async def get(request: Request) -> Response:
    rt = _rt(request)
    key = authenticate(request)
    job_id = job_id_of(request)
    wait = min(_wait(request), rt.settings.integrations.max_wait)
    seq = await rt.feed.head() if wait > 0 else 0
    job = visible(key, await rt.store.get_job(job_id))
    if wait > 0 and job.status not in TERMINAL:
        async with stream_limits(request).hold(key.name):  # a long-poll counts as a stream while it waits
            await _until_finished(rt, job, seq, wait)
        job = await rt.store.get_job(job_id) or job
    return JSONResponse(await view(rt, job))


def encode_cursor(job: Job | JobSummary) -> str:
    """`<created_at>~<id>` of the page's last job (models.CURSOR_PATTERN): repr keeps the time exact."""
    return f"{float(job.created_at)!r}~{job.id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Any text of the cursor's form is a place to start from (a page of jobs older than it); any other, 422."""
    if not _CURSOR.fullmatch(cursor):
        raise invalid("cursor", "cursor is not one this API gave out (pass next_cursor as is)")
    created_at, job_id = cursor.split("~")
    return float(created_at), job_id


def _enum(request: Request, name: str, known: Collection[str]) -> str | None:
    """A query parameter among `known`, or None when absent; present but empty is refused like any unknown value."""
    value = request.query_params.get(name)
    if value is not None and value not in known:
        raise invalid(name, f"{name} must be one of {', '.join(sorted(known))}")
    return value


@api_endpoint
async def listing(request: Request) -> Response:
    rt = _rt(request)
    key = authenticate(request)
    query = request.query_params
    status_name = _enum(request, "status", [s.value for s in Status])
    status = None if status_name is None else Status(status_name)
    provider = _enum(request, "provider", rt.settings.providers)
    limit = DEFAULT_LIMIT
    if query.get("limit") is not None:
        raw = query["limit"]
        if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
            raise invalid("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
        limit = int(raw)
    before = decode_cursor(query["cursor"]) if "cursor" in query else None
    jobs = await rt.store.job_summaries(status, limit + 1, provider=provider, before=before,
                                        created_by=key.owner_filter())
    page = jobs[:limit]
    next_cursor = encode_cursor(page[-1]) if len(jobs) > limit else None
    return JSONResponse({"jobs": [await view(rt, job) for job in page], "next_cursor": next_cursor})


@api_endpoint
async def cancel(request: Request) -> Response:
    rt = _rt(request)
    key = writer(request)
    job_id = job_id_of(request)
    visible(key, await rt.store.get_job(job_id))
    try:
        job = await jobs_mod.cancel_job(rt, job_id)
    except KeyError:
        raise not_found("unknown job") from None
    except jobs_mod.NotCancelable as exc:
        raise ApiError(409, "not_cancelable", str(exc)) from None
    return JSONResponse(await view(rt, job))


def _expires(request: Request) -> int:
    raw = request.query_params.get("expires")
    if raw is None:
        return DEFAULT_EXPIRES
    if not _FILE_N.fullmatch(raw) or not 1 <= int(raw) <= MAX_EXPIRES:
        raise invalid("expires", f"expires must be an integer number of seconds from 1 to {MAX_EXPIRES}")
    return int(raw)


@api_endpoint
async def file(request: Request) -> Response:
    rt = _rt(request)
    key = authenticate(request)
    job_id = job_id_of(request)
    visible(key, await rt.store.get_job(job_id))
    raw = request.path_params["n"]
    missing = not_found("no such stored file")
    if not _FILE_N.fullmatch(raw):
        raise missing
    n = int(raw)
    expires = _expires(request)
    record = await stored_file(rt.store, job_id, n)
    if record is None:
        raise missing
    response = await result_response(rt.results, record, max_age=expires)
    if response.status_code == 404:
        raise missing
    return response

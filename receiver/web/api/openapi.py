"""`GET /openapi.json`: OpenAPI 3.1 for /v1, its component schemas taken from :mod:`.models`."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.config.integrations import EVENT_TYPES
from receiver.engine.jobs import WEBHOOK_EVENTS
from receiver.web.api.auth import authenticate
from receiver.web.api.errors import api_endpoint
from receiver.web.api.jobs import DEFAULT_EXPIRES, DEFAULT_LIMIT, MAX_EXPIRES, MAX_LIMIT, MAX_WAIT
from receiver.web.api.models import (
    ANY_MODEL_PATTERN,
    CURSOR_PATTERN,
    EVENT_TYPES_PATTERN,
    JOB_ID_PATTERN,
    MODEL_PATTERNS,
    SINCE_SCHEMA,
    CreateJob,
    ErrorBody,
    EventEnvelope,
    JobList,
    JobView,
    LegacyError,
    Report,
    SweepReport,
    Timeline,
)
from submitter.dialects import Dialect
from submitter.status import Status

__all__ = ["document", "openapi"]

REF = "#/components/schemas/{model}"
JOB_ID = {"name": "job_id", "in": "path", "required": True, "description": "A job id (fh_...).",
          "schema": {"type": "string", "pattern": JOB_ID_PATTERN}}
ERRORS = {
    "400": "Bad JSON, a body that is not an object, or a bad Idempotency-Key.",
    "408": "The body did not arrive in time.",
    "401": "Missing or wrong API key.",
    "403": "The key's scope does not allow this (a `read` key creates, cancels and retries nothing).",
    "404": "Not found (a job a `submit` key did not create is not found for it), or the API is off"
           " (no FLUXHOOK_API_KEYS).",
    "409": "Conflict: idempotency key reused with another body, or the job cannot be canceled (`not_cancelable`)"
           " or retried (`not_retryable`).",
    "413": "Body over 256 KiB.",
    "422": "A field is missing, of the wrong type or not acceptable; `field` names it.",
    "429": "`too_many_streams`: the key (FLUXHOOK_MAX_STREAMS_PER_KEY) or the server (FLUXHOOK_MAX_STREAMS) has as"
           " many event streams and long-polls open as allowed; retry after Retry-After seconds.",
    "503": "The store is unavailable: retry after Retry-After seconds.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref(name)}}}
    if headers:
        answer["headers"] = headers
    return answer


def _op(op_id: str, summary: str, ok: dict[str, dict[str, Any]], errors: tuple[str, ...],
        **extra: Any) -> dict[str, Any]:
    responses = dict(ok)
    for code in ("401", "404", *errors, "503"):
        headers = None
        if code == "401":
            headers = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        elif code in ("429", "503"):
            headers = {"Retry-After": {"schema": {"type": "string"}}}
        responses[code] = _json("ErrorBody", ERRORS[code], headers)
    return {"operationId": op_id, "summary": summary, "responses": responses, **extra}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


@functools.cache
def _components() -> dict[str, Any]:
    models: list[type[BaseModel]] = [CreateJob, JobView, JobList, ErrorBody, EventEnvelope, LegacyError, SweepReport,
                                     Timeline, Report]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    found: dict[str, Any] = defs["$defs"]
    return found


def _create_rules(create: dict[str, Any], creatable: Mapping[str, Dialect] | None) -> None:
    """What `POST /v1/jobs` checks beyond the model's types: the model name's form (any provider's, and each
    provider's own), and, per provider, the providers that can take a job (API key set) and their event filter."""
    create["properties"]["model"]["pattern"] = ANY_MODEL_PATTERN
    if creatable is None:
        return
    create["properties"]["provider"]["enum"] = sorted(creatable)
    groups: dict[tuple[bool, bool], list[str]] = {}
    for name, dialect in sorted(creatable.items()):
        groups.setdefault((dialect.owner_model, dialect.signature == "standard-webhooks"), []).append(name)
    branches = []
    for (owner, filters), names in groups.items():
        events: dict[str, Any] = {"type": "null"}
        if filters:  # receiver.engine.jobs.submit_options
            events = {"anyOf": [events, {"type": "array", "items": {"enum": list(WEBHOOK_EVENTS)},
                                         "contains": {"const": "completed"}}]}
        branches.append({"properties": {"provider": {"enum": names}, "model": {"pattern": MODEL_PATTERNS[owner]},
                                        "events": events}})
    create["anyOf"] = branches


def document(listed: tuple[str, ...] = (), creatable: Mapping[str, Dialect] | None = None) -> dict[str, Any]:
    """The document; `listed`: the configured providers, `creatable`: those whose API key is set (None: not
    known, the provider-specific rules are left out)."""
    schemas = copy.deepcopy(_components())
    _create_rules(schemas["CreateJob"], creatable)
    provider: dict[str, Any] = {"type": "string"}
    if listed:
        provider["enum"] = list(listed)
    job = _json("JobView", "The job.")
    idempotency = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "Same key and body again: the same job (200, Idempotent-Replayed: true).",
                   "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}}
    paths: dict[str, Any] = {
        "/v1/jobs": {
            "post": _op(
                "createJob", "Create a job (it is in the ledger before the answer).",
                {"201": _json("JobView", "Created.", {"Location": {"schema": {"type": "string"}}}),
                 "200": _json("JobView", "Replayed: the job an earlier request with this Idempotency-Key made.",
                              {"Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}})},
                ("400", "403", "408", "409", "413", "422"), parameters=[idempotency],
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("CreateJob")}}},
            ),
            "get": _op(
                "listJobs", "Jobs, newest first, one page at a time.",
                {"200": _json("JobList", "One page.")}, ("422",),
                parameters=[
                    _query("status", {"type": "string", "enum": [s.value for s in Status]}, "Only this status."),
                    _query("provider", provider, "Only this provider."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                     "default": DEFAULT_LIMIT}, "Page size."),
                    _query("cursor", {"type": "string", "pattern": CURSOR_PATTERN}, "The previous page's next_cursor."),
                ],
            ),
        },
        "/v1/jobs/{job_id}": {"get": _op(
            "getJob", "A job; with wait, answers once it is finished or after wait seconds.",
            {"200": job}, ("422", "429"),
            parameters=[JOB_ID, _query("wait", {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                                       "Long-poll: seconds to wait for the job to finish.")],
        )},
        "/v1/jobs/{job_id}/cancel": {"post": _op(
            "cancelJob", "Cancel a job that is not finished (canceled again: the same answer).",
            {"200": job}, ("403", "409"), parameters=[JOB_ID],
        )},
        "/v1/jobs/{job_id}/files/{n}": {"get": _op(
            "getJobFile", "A stored result file, or a redirect to it in object storage.",
            {"200": {"description": "The file.", "content": {
                t: {"schema": {"type": "string", "format": "binary"}}
                for t in ("image/png", "image/jpeg", "image/webp", "application/octet-stream")}},
             "307": {"description": "A presigned URL of the file.",
                     "headers": {"Location": {"schema": {"type": "string"}}}}},
            ("422",), parameters=[
                JOB_ID, {"name": "n", "in": "path", "required": True,
                         "schema": {"type": "integer", "minimum": 0, "maximum": 999999}},
                _query("expires", {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRES,
                                   "default": DEFAULT_EXPIRES},
                       "Object storage: seconds the presigned URL stays valid (a local folder: the cache time)."),
            ],
        )},
        "/v1/jobs/{job_id}/timeline": {"get": _op(
            "getJobTimeline", "What `fluxhook events` shows: creation, submit, each kept callback (its audit id and"
            " verdict), each outbox event and, for `admin` and `read` keys, each delivery to a sink.",
            {"200": _json("Timeline", "The job and its timeline, oldest first.")}, (), parameters=[JOB_ID],
        )},
        "/v1/jobs/{job_id}/retry": {"post": _op(
            "retryJob", "Download again a job whose download failed or expired after the provider delivered"
            " (re-polling fresh URLs); the job goes back to `succeeded`. A job already `succeeded` is answered as is.",
            {"200": job}, ("403", "409"), parameters=[JOB_ID],
        )},
        "/v1/report": {"get": _op(
            "getReport", "Reconciliation per provider, then a total (a `submit` key: only the jobs it created).",
            {"200": _json("Report", "The report.")}, ("422",),
            parameters=[_query("since", SINCE_SCHEMA,
                               "Only jobs created since this RFC 3339 time, or this date (midnight UTC).")],
        )},
        "/v1/events": {"get": _op(
            "streamEvents", "Server-sent events from the outbox (text/event-stream).",
            {"200": {"description": "`retry: 2000`, then frames `id: <seq>` / `event: <type>` / `data: <EventEnvelope "
                                    "JSON>`, and `: heartbeat` comments.",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            ("422", "429"),
            parameters=[
                _query("job", {"type": "string", "pattern": JOB_ID_PATTERN}, "Only this job's events."),
                _query("types", {"type": "string", "pattern": EVENT_TYPES_PATTERN},
                       f"Comma-separated, among {', '.join(EVENT_TYPES)}."),
                _query("after", {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}, "Resume after this seq."),
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}, "description": "Resume (wins over after)."},
            ],
        )},
        "/v1/sweep": {"post": {
            "operationId": "sweep", "summary": "One sweep pass (FLUXHOOK_SWEEP_TOKEN; 404 without it).",
            "security": [{"sweepToken": []}],
            "responses": {"200": _json("SweepReport", "What the pass did."),
                          "401": _json("LegacyError", "Missing or wrong sweep token."),
                          "404": _json("LegacyError", "No sweep token configured."),
                          "503": _json("LegacyError", "The store is unavailable.")},
        }},
        "/openapi.json": {"get": _op(
            "openapi", "This document.",
            {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}},
            (),
        )},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "fluxhook", "version": "1", "description": "Submit FLUX image jobs, follow them, "
                 "fetch their results. Errors: {\"error\": {\"code\", \"message\", \"field\"?}}."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "security": [{"apiKey": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A key of FLUXHOOK_API_KEYS."},
                "sweepToken": {"type": "http", "scheme": "bearer", "description": "FLUXHOOK_SWEEP_TOKEN."},
            },
        },
    }


@api_endpoint
async def openapi(request: Request) -> Response:
    authenticate(request)
    settings = request.app.state.runtime.settings
    creatable = {name: p.dialect for name, p in settings.providers.items() if p.api_key}
    return JSONResponse(document(tuple(sorted(settings.providers)), creatable))

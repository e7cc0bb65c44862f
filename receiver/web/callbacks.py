"""HTTP endpoints: the provider callback and a health check.

The callback does only what must happen before the 2xx: authenticate, parse,
record durably (deduplicated) and move the job. Downloads happen afterwards.
It is the one hot path, so it is a plain ASGI app under its route: no request or
response objects, the body read straight from `receive`, the answer sent as bytes.
Errors are raised as :class:`~receiver.errors.ReceiverError`, which the app's one
handler turns into responses, as for every other route.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.engine.jobs import apply_report
from receiver.engine.refusals import note_token_mismatch
from receiver.engine.runtime import Runtime
from receiver.engine.secrets import SecretUnavailable
from receiver.errors import (
    BadPayload,
    Conflict,
    NotFound,
    ReceiverError,
    Refused,
    Unauthorized,
    Unavailable,
)
from receiver.store import Event, TaskMismatch
from receiver.web.auth import operator_authorized
from receiver.web.bodies import receive_body, redact_headers
from submitter.bodies import BodyError, loads_object
from submitter.dialects import parse_observation
from submitter.signing import VerificationError, derive_job_keys, verify_bfl, verify_standard, verify_token
from submitter.status import Status
from submitter.urls import too_many_outputs

__all__ = ["HOOK_PATH", "CallbackShortcut", "Hook", "error_response", "health", "hook"]

log = logging.getLogger("fluxhook.hooks")

async def _verify(
    rt: Runtime, provider: str, body: bytes, headers: Mapping[str, str], job_secret: str
) -> tuple[str | None, str]:
    """Check the callback's signature per the provider's scheme: (message id or None, scheme name).

    The path token was checked already. BFL-shaped callbacks are signed with the
    per-job secret (if at all). Standard Webhooks callbacks are signed with the
    account's secret: required for Replicate itself; for proxies, which sign with
    their own account's secret, a signature that does not verify is not held
    against a callback whose token is right.
    """
    target = rt.settings.provider(provider)
    dialect = target.dialect
    if dialect.signature == "bfl":
        return None, verify_bfl(body, headers, job_secret)
    message_id = headers.get("webhook-id")
    if headers.get("webhook-signature") is None:
        if dialect.signature_required:
            raise VerificationError("missing webhook-signature header")
        return message_id, "token"
    now, tolerance = rt.clock(), rt.settings.webhook_tolerance
    try:
        secrets = await rt.webhook_secrets.get(target)
    except SecretUnavailable as exc:
        if not dialect.signature_required:
            return message_id, "token (signature not verifiable)"
        raise Unavailable(str(exc)) from None
    try:
        return verify_standard(body, headers, secrets, now=now, tolerance=tolerance), "standard-webhooks"
    except VerificationError:
        try:
            refreshed = await rt.webhook_secrets.refresh(target)
        except SecretUnavailable:
            refreshed = False
        if refreshed:
            secrets = await rt.webhook_secrets.get(target)
            try:
                return verify_standard(body, headers, secrets, now=now, tolerance=tolerance), "standard-webhooks"
            except VerificationError:
                if dialect.signature_required:
                    raise
        elif dialect.signature_required:
            raise
    return message_id, "token (signature not verifiable)"


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@functools.lru_cache(maxsize=64)
def _encoded(answer: tuple[tuple[str, object], ...]) -> bytes:
    """A callback's answer as JSON: one of a few (a status, duplicate, recorded), each encoded once."""
    return json.dumps(dict(answer), separators=(",", ":")).encode()


async def _answer(send: Send, payload: dict[str, Any]) -> None:
    """A 200 with `payload` as JSON."""
    body = _encoded(tuple(payload.items()))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _printable(text: str, cap: int = 80) -> str:
    """A caller-chosen value as a log line may quote it: printable, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in text[:cap])
    return text + ("..." if len(text) >= cap else "")


def _refused(rt: Runtime, provider: str, job_id: str, verdict: str, reason: str) -> None:
    """Count a refused callback and log it at WARNING (rate-limited per reason: forgeries are free)."""
    if verdict in ("rejected", "bad_body", "refused"):
        rt.metrics[verdict] += 1
    rt.prom.callback(provider, verdict)
    job, reason = _printable(job_id), _printable(reason, 200)
    rt.log_limiter.log(logging.WARNING, f"{verdict}: {reason}", "callback for %s job %s refused (%s): %s",
                       provider, job, verdict, reason,
                       extra={"job_id": job, "provider": provider, "event": "callback-refused", "verdict": verdict,
                              "reason": reason})


class Hook:
    """`POST /hooks/{provider}/{job_id}/{token}`: a provider's callback, as an ASGI app (a route
    given a class instance calls it with scope, receive and send; a function would get a Request)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rt: Runtime = scope["app"].state.runtime
        provider = scope["path_params"]["provider"]
        if provider not in rt.settings.providers:
            raise NotFound(f"unknown provider {provider!r}")
        started = time.perf_counter()
        try:
            await _answer(send, await _hook(scope, receive, rt, provider))
        finally:
            rt.prom.acked(provider, time.perf_counter() - started)


hook = Hook()

#: The hook route's path, as Starlette's router matches `/hooks/{provider}/{job_id}/{token}`.
HOOK_PATH = re.compile(r"/hooks/(?P<provider>[^/]+)/(?P<job_id>[^/]+)/(?P<token>[^/]+)")


class CallbackShortcut:
    """Middleware: a provider callback goes straight to :data:`hook`, past the exception middleware
    and the router (the hottest path there is: tens of microseconds of each callback's CPU).
    Errors are answered by the app's own handlers; any other request, and a callback under a
    root path, goes the usual way (the hook's route answers it just the same)."""

    def __init__(self, app: ASGIApp, handlers: Mapping[type[Exception], Callable[[Request, Exception], Any]]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = (HOOK_PATH.fullmatch(scope["path"])
                   if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path") else None)
        if matched is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = matched.groupdict()
        try:
            await hook(scope, receive, send)
        except Exception as exc:
            handler = next((self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None)
            if handler is None:
                raise  # a bug: the server error middleware answers 500 and logs it
            response = handler(Request(scope, receive), exc)
            await response(scope, receive, send)


async def _hook(scope: Scope, receive: Receive, rt: Runtime, provider: str) -> dict[str, Any]:
    job_id = scope["path_params"]["job_id"]
    token = scope["path_params"]["token"]
    settings = rt.settings
    if settings.secret_key is None:
        raise NotFound("this receiver accepts no callbacks (FLUXHOOK_SECRET_KEY unset)")
    headers = Headers(scope=scope)
    body = await receive_body(receive, headers, settings.max_body, settings.body_timeout)
    keys = derive_job_keys(settings.secret_key, provider, job_id)
    dialect = settings.provider(provider).dialect
    try:
        verify_token(keys.token, token)
    except VerificationError as exc:
        _refused(rt, provider, job_id, "rejected", str(exc))
        # Most often the job was submitted under another FLUXHOOK_SECRET_KEY: say so on the job (once).
        await note_token_mismatch(rt.store, rt.note_gate, provider, job_id, now=rt.clock())
        raise Unauthorized(str(exc)) from None
    try:
        message_id, scheme = await _verify(rt, provider, body, headers, keys.webhook_secret)
    except VerificationError as exc:
        _refused(rt, provider, job_id, "rejected", str(exc))
        raise Unauthorized(str(exc)) from None
    try:
        observation = parse_observation(dialect, loads_object(body))
    except BodyError as exc:
        _refused(rt, provider, job_id, "bad_body", str(exc))
        raise BadPayload(str(exc)) from None
    if observation.provider_job_id is None:
        # Without it, nothing ties the body to this job's provider task (the mismatch check).
        _refused(rt, provider, job_id, "bad_body", "no provider task id")
        raise BadPayload("callback names no provider task (no id)")
    refusal = too_many_outputs(observation, rt.settings.max_outputs)
    if refusal:
        _refused(rt, provider, job_id, "refused", "too many outputs")
        raise Refused(refusal)
    now = rt.clock()
    # Retries of one message share its id (Standard Webhooks); without one, identical bodies are one event.
    key = f"id:{message_id}" if message_id else "sha256:" + hashlib.sha256(body).hexdigest()
    event = Event(
        job_id=job_id,
        provider=provider,
        dedup_key=f"{provider}/{job_id}/{key}",
        received_at=now,
        headers=redact_headers(headers),
        body=body,
        verdict=f"accepted:{scheme}",
    )
    try:
        outcome = await apply_report(rt, provider, job_id, observation, now=now, event=event)
    except TaskMismatch:
        _refused(rt, provider, job_id, "conflict", "different provider task")
        raise Conflict("callback names a different provider task than this job's") from None
    if not outcome.found:
        _refused(rt, provider, job_id, "unknown_job", "unknown job")
        raise NotFound("unknown job")
    rt.failpoint("after-callback-commit")
    if outcome.duplicate:
        rt.metrics["duplicate"] += 1
        rt.prom.callback(provider, "duplicate")
        return {"ok": True, "duplicate": True}
    rt.metrics["accepted"] += 1
    rt.prom.callback(provider, "accepted")
    if outcome.changed:
        rt.prom.ended(provider, outcome.status)
    if outcome.status == Status.SUCCEEDED:
        rt.kick()
    answer: dict[str, object] = {"ok": True, "status": str(outcome.status)}
    if not outcome.recorded:
        answer["recorded"] = False  # the job is finished, or its audit cap is reached
    return answer


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers. The callback counters only with operator credentials."""
    if not operator_authorized(request):
        return JSONResponse({"ok": True})
    return JSONResponse({"ok": True, "callbacks": dict(_runtime(request).metrics)})


def error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ReceiverError)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

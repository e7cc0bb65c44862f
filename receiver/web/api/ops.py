"""Operators' endpoints: `GET /metrics` (Prometheus) and `GET /readyz` (can this process do its work?).

`/metrics` is protected like the API: with FLUXHOOK_API_KEYS set, any API key is accepted as
`Authorization: Bearer <key>`; FLUXHOOK_METRICS_TOKEN adds a token good for /metrics only. With
neither set it is open (fluxhook listens on loopback by default: put it behind your proxy).

`/readyz` answers 200 ``{"ready": true}`` when the database answers and a probe file can be written
to and removed from the result store; else 503 ``{"ready": false, "problems": [...]}`` naming each
problem. `/healthz` stays a liveness check (the process answers), never touching either.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.web.auth import constant_time_match

if TYPE_CHECKING:
    from receiver.engine.runtime import Runtime

__all__ = ["PROBE_TIMEOUT", "metrics", "ops_routes", "readyz"]

#: Seconds each readiness check may take before it counts as failed.
PROBE_TIMEOUT = 5.0


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _authorized(request: Request, rt: Runtime) -> bool:
    allowed = [k.secret for k in rt.settings.integrations.api_keys if k.operates]
    if rt.settings.metrics_token:
        allowed.append(rt.settings.metrics_token)
    if not allowed and not rt.settings.integrations.api_keys:
        return True  # nothing configured: open (loopback); keys of the scope `submit` alone still close it
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and constant_time_match(given.strip(), allowed) is not None


async def metrics(request: Request) -> Response:
    rt = _runtime(request)
    if not _authorized(request, rt):
        return JSONResponse({"error": "a valid token is required: Authorization: Bearer <token>"}, status_code=401,
                            headers={"www-authenticate": "Bearer"})
    body = await rt.prom.render(rt.store)
    return Response(body, media_type=rt.prom.content_type, headers={"cache-control": "no-store"})


async def _check_store(rt: Runtime) -> str | None:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await rt.store.last_seq()
    except TimeoutError:
        return f"database: no answer within {PROBE_TIMEOUT:.0f} s"
    except Exception as exc:
        return f"database: {rt.redactor.scrub(str(exc)) or type(exc).__name__}"
    return None


async def _check_results(rt: Runtime) -> str | None:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return await rt.results.probe()  # each store probes itself (receiver/results/contract.py)
    except TimeoutError:
        return f"results: {rt.results.url}: no answer within {PROBE_TIMEOUT:.0f} s"


async def readyz(request: Request) -> JSONResponse:
    rt = _runtime(request)
    problems = [p for p in await asyncio.gather(_check_store(rt), _check_results(rt)) if p]
    if rt.stopping.is_set():
        problems.append("shutting down")
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503,
                            headers={"cache-control": "no-store", "retry-after": "5"})
    return JSONResponse({"ready": True}, headers={"cache-control": "no-store"})


def ops_routes() -> list[Route]:
    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]

"""Operators' endpoints: `GET /metrics` (Prometheus) and `GET /readyz` (can this process do its work?).

Operator credentials are `Authorization: Bearer <token>` with a key of FLUXHOOK_API_KEYS or the
FLUXHOOK_METRICS_TOKEN (`receiver.web.auth.operator_authorized`). `/metrics` asks for them whenever
either is configured; with neither it is open (fluxhook listens on loopback by default, and
`fluxhook serve` refuses a public address in that state: receiver/serve/exposure.py).

`/readyz` answers 200 ``{"ready": true}`` when the database answers and a probe file can be written
to and removed from the result store; else 503 ``{"ready": false}``. Only a caller with operator
credentials is told the problems (``"problems": [...]``, which name the results folder or bucket);
they are logged in any case. The checks run at most once per :data:`READY_TTL` seconds, however
many callers ask: each probe writes and fsyncs a file (or puts an object), which anyone who can
reach the port may ask for. `/healthz` stays a liveness check (the process answers), never
touching either.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.web.auth import operator_authorized

if TYPE_CHECKING:
    from receiver.engine.runtime import Runtime

__all__ = ["PROBE_TIMEOUT", "READY_TTL", "Readiness", "metrics", "ops_routes"]

log = logging.getLogger("fluxhook.ready")

#: Seconds each readiness check may take before it counts as failed.
PROBE_TIMEOUT = 5.0
#: Seconds a readiness answer is reused (by the runtime's clock). A load balancer asks every few
#: seconds, so the answer is as fresh as it needs; a flood of /readyz calls costs at most one probe
#: write (and one log line per problem) per interval.
READY_TTL = 5.0


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def metrics(request: Request) -> Response:
    rt = _runtime(request)
    if rt.settings.metrics_protected and not operator_authorized(request):
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


class Readiness:
    """`GET /readyz` of one app: the last checks' problems, reused for :data:`READY_TTL` seconds;
    callers arriving while the checks run wait for that same run."""

    def __init__(self) -> None:
        self.checked_at: float | None = None
        self.problems: tuple[str, ...] = ()
        self.running: asyncio.Task[tuple[str, ...]] | None = None

    async def check(self, rt: Runtime) -> tuple[str, ...]:
        """The problems of the database and the result store, checked now or at most READY_TTL ago."""
        if self.checked_at is not None and 0 <= rt.clock() - self.checked_at < READY_TTL:
            return self.problems
        if self.running is None:
            self.running = asyncio.ensure_future(self._run(rt))
        # Shielded: a caller that goes away does not cancel the checks the others wait for.
        return await asyncio.shield(self.running)

    async def _run(self, rt: Runtime) -> tuple[str, ...]:
        try:
            found = tuple(p for p in await asyncio.gather(_check_store(rt), _check_results(rt)) if p)
            self.problems, self.checked_at = found, rt.clock()
        finally:
            self.running = None
        for problem in found:  # once per run: at most once per READY_TTL per problem
            log.warning("not ready: %s", problem, extra={"event": "not-ready", "reason": problem})
        return found

    async def endpoint(self, request: Request) -> JSONResponse:
        rt = _runtime(request)
        problems = list(await self.check(rt))
        if rt.stopping.is_set():
            problems.append("shutting down")
        headers = {"cache-control": "no-store"}
        if not problems:
            return JSONResponse({"ready": True}, headers=headers)
        # What is wrong (paths, buckets, database errors) is for operators only.
        answer = {"ready": False, "problems": problems} if operator_authorized(request) else {"ready": False}
        return JSONResponse(answer, status_code=503, headers={**headers, "retry-after": "5"})


def ops_routes() -> list[Route]:
    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/readyz", Readiness().endpoint, methods=["GET"]),
    ]

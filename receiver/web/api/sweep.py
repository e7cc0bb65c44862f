"""`POST /v1/sweep`: one sweep pass on request, for schedulers that can only call a URL
(Cloud Scheduler, a cron service) where no in-process sweep loop runs between requests.

Authenticated by a bearer key (FLUXHOOK_SWEEP_TOKEN, compared in constant time). Without that
setting the endpoint does not exist: 404, as for any unknown URL.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse

from receiver.engine.runtime import Runtime
from receiver.engine.sweep import sweep_once
from receiver.errors import NotFound, Unauthorized

__all__ = ["check_bearer", "sweep"]


def check_bearer(expected: str | None, authorization: str | None) -> None:
    """NotFound if no key is configured; Unauthorized unless `authorization` is `Bearer <expected>`."""
    if expected is None:
        raise NotFound("not found")
    scheme, _, given = (authorization or "").partition(" ")
    # Both sides as bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
    ok = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected.encode())
    if scheme.lower() != "bearer" or not ok:
        raise Unauthorized("a bearer key (FLUXHOOK_SWEEP_TOKEN) is required")


async def sweep(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    check_bearer(rt.settings.sweep_token, request.headers.get("authorization"))
    report = await sweep_once(rt)
    return JSONResponse(report.as_dict())

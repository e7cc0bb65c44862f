"""`POST /v1/sweep`: one sweep pass on request, for schedulers that can only call a URL
(Cloud Scheduler, a cron service) where no in-process sweep loop runs between requests.

Authenticated by a bearer key: FLUXHOOK_SWEEP_TOKEN, or an API key of the scope `admin`
(FLUXHOOK_API_KEYS), compared in constant time. With neither configured the endpoint does not
exist: 404, as for any unknown URL.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from receiver.config.keys import Scope
from receiver.engine.runtime import Runtime
from receiver.engine.sweep import sweep_once
from receiver.errors import NotFound, Unauthorized
from receiver.web.auth import bearer_token, constant_time_match

__all__ = ["check_bearer", "sweep"]


def check_bearer(allowed: tuple[str, ...], given: str | None) -> None:
    """NotFound if nothing is `allowed`; Unauthorized unless `given` (the request's Bearer token) is one of them."""
    if not allowed:
        raise NotFound("not found")
    if given is None or constant_time_match(given, allowed) is None:
        raise Unauthorized("a bearer key (FLUXHOOK_SWEEP_TOKEN, or an API key of the scope admin) is required")


async def sweep(request: Request) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    admins = tuple(k.secret for k in rt.settings.integrations.api_keys if k.scope == Scope.ADMIN)
    check_bearer((*((rt.settings.sweep_token,) if rt.settings.sweep_token else ()), *admins),
                 bearer_token(request))
    report = await sweep_once(rt)
    return JSONResponse(report.as_dict())

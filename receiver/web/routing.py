"""Endpoints whose module is imported on their first request, not when the app is built.

The /v1 API (pydantic), the /ui pages (jinja2) and the operators' endpoints (prometheus_client) are
not needed to answer a provider's callback or /healthz: their routes exist from the start, with a
small endpoint that imports the real one when it is first called and calls straight through after.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["lazy"]

Endpoint = Callable[[Request], Awaitable[Response]]


def lazy(target: str) -> Endpoint:
    """The endpoint `"package.module:function"`, its module imported on the first request."""
    module, _, name = target.partition(":")

    @functools.cache
    def resolve() -> Endpoint:
        found: Endpoint = getattr(importlib.import_module(module), name)
        return found

    async def endpoint(request: Request) -> Response:
        return await resolve()(request)

    endpoint.__name__ = endpoint.__qualname__ = name  # the route's name, as if it were the real one
    return endpoint

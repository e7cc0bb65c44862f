"""The receiver's API keys (FLUXHOOK_API_KEYS), as the /v1 API and the /ui pages both check them.

A given value is compared with every configured key in constant time (no early exit, so the time
taken does not tell which key was close). Neither the given value nor any key ever appears in an
answer or a log line. A match is the configured :class:`~receiver.config.keys.ApiKey`, whose scope
says what the caller may do. What a miss is answered with is each surface's own:
receiver/web/api/auth.py (a 401 in the API's error shape), receiver/web/ui/pages.py (a redirect to
the login form).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.requests import Request

from receiver.config.keys import ApiKey

__all__ = [
    "api_keys", "bearer_key", "bearer_token", "constant_time_match", "key_for", "match_key", "operator_authorized",
]


def api_keys(request: Request) -> tuple[ApiKey, ...]:
    """The configured keys; none: the API and the UI are off."""
    keys: tuple[ApiKey, ...] = request.app.state.runtime.settings.integrations.api_keys
    return keys


def constant_time_match(given: str, secrets: Iterable[str]) -> str | None:
    """The secret in `secrets` equal to `given`, every one compared in constant time (no early exit); else None."""
    # Bytes on both sides: compare_digest refuses non-ASCII str, and a header may carry anything.
    offered = given.encode("utf-8", "surrogateescape")
    matched: str | None = None
    for secret in secrets:
        if hmac.compare_digest(offered, secret.encode()) and matched is None:
            matched = secret
    return matched


def key_for(given: str, keys: Iterable[ApiKey]) -> ApiKey | None:
    """The key of `keys` whose secret is `given`, compared like :func:`constant_time_match`; else None."""
    keys = tuple(keys)
    secret = constant_time_match(given, (k.secret for k in keys))
    return next((k for k in keys if k.secret == secret), None) if secret is not None else None


def match_key(request: Request, given: str) -> ApiKey | None:
    """The configured key equal to `given` (the UI's login form), compared like Bearer; else None."""
    return key_for(given, api_keys(request))


def bearer_token(request: Request) -> str | None:
    """What `Authorization: Bearer <token>` carries (stripped), or None without a Bearer header."""
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def bearer_key(request: Request) -> ApiKey | None:
    """The configured key the request's `Authorization: Bearer <key>` carries; else None."""
    given = bearer_token(request)
    return key_for(given, api_keys(request)) if given is not None else None


def operator_authorized(request: Request) -> bool:
    """Whether the request carries operator credentials: `Authorization: Bearer <token>` with a key of
    FLUXHOOK_API_KEYS whose scope operates (admin, read) or the FLUXHOOK_METRICS_TOKEN (/metrics, and the
    details of /readyz and /healthz). With neither configured no request does (whether /metrics is then
    open is its own rule)."""
    token: str | None = request.app.state.runtime.settings.metrics_token
    given = bearer_token(request)
    allowed = (*(k.secret for k in api_keys(request) if k.operates), *((token,) if token else ()))
    return given is not None and constant_time_match(given, allowed) is not None

"""The receiver's API keys (FLUXHOOK_API_KEYS), as the /v1 API and the /ui pages both check them.

A given value is compared with every configured key in constant time (no early exit, so the time
taken does not tell which key was close). Neither the given value nor any key ever appears in an
answer or a log line. What a miss is answered with is each surface's own: receiver/web/api/auth.py
(a 401 in the API's error shape), receiver/web/ui/pages.py (a redirect to the login form).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.requests import Request

__all__ = ["api_keys", "bearer_key", "constant_time_match", "key_scope", "match_key"]


def api_keys(request: Request) -> tuple[str, ...]:
    """The configured keys; none: the API and the UI are off."""
    keys: tuple[str, ...] = request.app.state.runtime.settings.integrations.api_keys
    return keys


def constant_time_match(given: str, keys: Iterable[str]) -> str | None:
    """The key in `keys` equal to `given`, every key compared in constant time (no early exit); else None."""
    # Bytes on both sides: compare_digest refuses non-ASCII str, and a header may carry anything.
    offered = given.encode("utf-8", "surrogateescape")
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(offered, key.encode()) and matched is None:
            matched = key
    return matched


def match_key(request: Request, given: str) -> str | None:
    """The configured key equal to `given` (the UI's login form), compared like Bearer; else None."""
    return constant_time_match(given, api_keys(request))


def bearer_key(request: Request) -> str | None:
    """The configured key the request's `Authorization: Bearer <key>` carries; else None."""
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    matched = constant_time_match(given.strip(), api_keys(request))
    return matched if scheme.lower() == "bearer" else None


def key_scope(key: str) -> str:
    """A stable, non-secret name of an API key: Idempotency-Keys and stream caps are scoped by it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]

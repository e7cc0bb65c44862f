"""Bearer keys of the /v1 API (FLUXHOOK_API_KEYS).

No key configured: the API is off and answers 404. Otherwise the `Authorization: Bearer <key>`
header is compared with every configured key in constant time (no early exit, so the time taken
does not tell which key was close), and a miss is 401 with `WWW-Authenticate: Bearer`. Neither
the given value nor any key ever appears in an answer or a log line.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from .errors import ApiError

__all__ = ["authenticate", "key_scope"]

OFF = "the API is off: set FLUXHOOK_API_KEYS"


def authenticate(request: Request) -> str:
    """The configured key the request carries; ApiError 404 (API off) or 401 (missing/wrong key)."""
    keys: tuple[str, ...] = request.app.state.runtime.settings.integrations.api_keys
    if not keys:
        raise ApiError(404, "not_found", OFF)
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    # Bytes on both sides: compare_digest refuses non-ASCII str, and a header may carry anything.
    offered = given.strip().encode("utf-8", "surrogateescape")
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(offered, key.encode()) and matched is None:
            matched = key
    if scheme.lower() != "bearer" or matched is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                       headers={"www-authenticate": "Bearer"})
    return matched


def key_scope(key: str) -> str:
    """A stable, non-secret name of an API key: Idempotency-Keys are scoped by it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]

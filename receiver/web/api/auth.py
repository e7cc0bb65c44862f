"""Bearer keys of the /v1 API (FLUXHOOK_API_KEYS).

No key configured: the API is off and answers 404. Otherwise the `Authorization: Bearer <key>`
header is compared with every configured key in constant time (no early exit, so the time taken
does not tell which key was close), and a miss is 401 with `WWW-Authenticate: Bearer`. Neither
the given value nor any key ever appears in an answer or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.requests import Request

from receiver.web.api.errors import ApiError

__all__ = [
    "SESSION_COOKIE", "SESSION_MAX_AGE", "authenticate", "constant_time_match", "key_scope", "match_key",
    "session_key", "session_token",
]

OFF = "the API is off: set FLUXHOOK_API_KEYS"


def authenticate(request: Request) -> str:
    """The configured key the request carries; ApiError 404 (API off) or 401 (missing/wrong key)."""
    keys: tuple[str, ...] = request.app.state.runtime.settings.integrations.api_keys
    if not keys:
        raise ApiError(404, "not_found", OFF)
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    matched = constant_time_match(given.strip(), keys)
    if scheme.lower() != "bearer" or matched is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                       headers={"www-authenticate": "Bearer"})
    return matched


def key_scope(key: str) -> str:
    """A stable, non-secret name of an API key: Idempotency-Keys are scoped by it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# -- browser sessions (the web UI) ----------------------------------------------------------
#: The UI's session cookie: `<issued unix seconds>.<hex HMAC-SHA256>` over the issue time and the key,
#: under the receiver's secret key. It proves the key was given at login without holding it.
SESSION_COOKIE = "fluxhook_session"
SESSION_MAX_AGE = 12 * 3600


def _session_mac(request: Request, key: str, issued: int) -> bytes:
    secret: bytes | None = request.app.state.runtime.settings.secret_key
    message = b"fluxhook-ui-session\0%d\0" % issued + key.encode()
    # Without a secret key (callbacks need one, the UI does not) the key itself keys the HMAC.
    return hmac.new(secret or key.encode(), message, hashlib.sha256).hexdigest().encode()


def session_token(request: Request, key: str, *, now: float) -> str:
    """The session cookie's value for a configured `key`, issued at `now`."""
    issued = int(now)
    return f"{issued}.{_session_mac(request, key, issued).decode()}"


def session_key(request: Request, *, now: float) -> str | None:
    """The configured key whose session cookie the request carries (unexpired, signed); else None.

    Every key is checked in constant time, as with Bearer; a changed or removed key ends its sessions."""
    keys: tuple[str, ...] = request.app.state.runtime.settings.integrations.api_keys
    issued_text, _, mac = (request.cookies.get(SESSION_COOKIE) or "").partition(".")
    if not keys or not (0 < len(issued_text) <= 12 and issued_text.isascii() and issued_text.isdigit()):
        return None
    issued = int(issued_text)
    if not now - SESSION_MAX_AGE <= issued <= now + 60:
        return None
    offered = mac.encode("utf-8", "surrogateescape")
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(offered, _session_mac(request, key, issued)) and matched is None:
            matched = key
    return matched


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
    return constant_time_match(given, request.app.state.runtime.settings.integrations.api_keys)

"""The UI's browser sessions: a cookie proving an API key was given at `/ui/login`, without holding it.

The cookie is `<issued unix seconds>.<hex HMAC-SHA256>` over the issue time and the key, under the
receiver's secret key. Every configured key is checked in constant time, as with Bearer
(receiver/web/auth.py); a changed or removed key ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from receiver.web.auth import api_keys

__all__ = ["SESSION_COOKIE", "SESSION_MAX_AGE", "session_key", "session_token"]

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
    """The configured key whose session cookie the request carries (unexpired, signed); else None."""
    keys = api_keys(request)
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

"""The UI's browser sessions: a cookie proving an API key was given at `/ui/login`, without holding it.

The cookie is `<issued unix seconds>.<random nonce>.<hex HMAC-SHA256>`, the HMAC over the issue time,
the nonce and the key, under the receiver's secret key (the nonce makes every login's cookie its own,
so ending one never ends another). Every configured key is checked in constant time, as with Bearer
(receiver/web/auth.py), so a changed or removed key ends its sessions. `/ui/logout` ends the
session it is sent with: the cookie's SHA-256 goes into the ledger's ended sessions until the
cookie would have expired (receiver/store/sql/sessions.py), and every replica refuses it from then
on, whoever kept a copy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request

from receiver.config.keys import ApiKey
from receiver.web.auth import api_keys

__all__ = ["SESSION_COOKIE", "SESSION_MAX_AGE", "end_session", "session_key", "session_token"]

SESSION_COOKIE = "fluxhook_session"
SESSION_MAX_AGE = 12 * 3600


def _session_mac(request: Request, key: ApiKey, issued: int, nonce: str) -> bytes:
    secret: bytes | None = request.app.state.runtime.settings.secret_key
    message = b"fluxhook-ui-session\0%d\0%s\0" % (issued, nonce.encode()) + key.secret.encode()
    # Without a secret key (callbacks need one, the UI does not) the key itself keys the HMAC.
    return hmac.new(secret or key.secret.encode(), message, hashlib.sha256).hexdigest().encode()


def session_token(request: Request, key: ApiKey, *, now: float) -> str:
    """The session cookie's value for a configured `key`, issued at `now`."""
    issued = int(now)
    nonce = secrets.token_hex(8)
    return f"{issued}.{nonce}.{_session_mac(request, key, issued, nonce).decode()}"


def _signed(request: Request, now: float) -> tuple[ApiKey, int, str] | None:
    """(key, issue time, cookie) of the request's session cookie if it is signed and unexpired; else None."""
    keys = api_keys(request)
    cookie = request.cookies.get(SESSION_COOKIE) or ""
    issued_text, _, rest = cookie.partition(".")
    nonce, _, mac = rest.partition(".")
    if not keys or not (0 < len(issued_text) <= 12 and issued_text.isascii() and issued_text.isdigit()):
        return None
    if issued_text != str(int(issued_text)):  # one spelling per session: "0" + a logged-out cookie is not new
        return None
    if not (len(nonce) == 16 and all(c in "0123456789abcdef" for c in nonce)):
        return None
    issued = int(issued_text)
    if not now - SESSION_MAX_AGE <= issued <= now + 60:
        return None
    offered = mac.encode("utf-8", "surrogateescape")
    matched: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(offered, _session_mac(request, key, issued, nonce)) and matched is None:
            matched = key
    # The cookie as it was issued (each part checked above has one spelling), as the ended sessions know it.
    return (matched, issued, f"{issued}.{nonce}.{mac}") if matched is not None else None


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


async def session_key(request: Request, *, now: float) -> ApiKey | None:
    """The configured key whose session cookie the request carries (unexpired, signed, not logged out); else None."""
    signed = _signed(request, now)
    if signed is None:
        return None
    key, _, cookie = signed
    ended: bool = await request.app.state.runtime.store.session_ended(_digest(cookie))
    return None if ended else key


async def end_session(request: Request, *, now: float) -> bool:
    """End the request's session, if it carries a valid one, for every replica: True if it did."""
    signed = _signed(request, now)
    if signed is None:
        return False
    _, issued, cookie = signed
    await request.app.state.runtime.store.end_session(_digest(cookie), expires_at=issued + SESSION_MAX_AGE + 60,
                                                      now=now)
    return True

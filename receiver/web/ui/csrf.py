"""Cross-site request forgery checks for the UI's forms (the actions of receiver/web/ui/actions.py).

Two checks, both needed by a browser's POST:

- Origin: a request carrying `Origin` must carry this receiver's own (the request's scheme and host, or
  FLUXHOOK_PUBLIC_URL's); another site's, or `null` (a sandboxed frame, a `data:` page), is refused.
- A per-session token in the form's hidden `csrf` field: an HMAC-SHA256 of the session cookie under the
  receiver's secret key (or, without one, the session's API key). Another site cannot read the cookie
  (HttpOnly, SameSite=Strict), so it cannot make the token; a logout ends both.

A request authenticated with `Authorization: Bearer` needs no token (a browser never adds that header
to a forged form), but still the Origin check when it sends one.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from starlette.requests import Request

from receiver.web.ui.pages import caller, runtime
from receiver.web.ui.sessions import SESSION_COOKIE

__all__ = ["CSRF_FIELD", "csrf_problem", "csrf_token", "same_origin"]

CSRF_FIELD = "csrf"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request) -> bool:
    """True if the request sends no Origin, or this receiver's own; never for `null`."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = {f"{request.url.scheme}://{request.url.netloc}".lower()}
    public = runtime(request).settings.public_url
    if public:
        own.add(_origin_of(public))
    return origin.rstrip("/").lower() in own


def csrf_token(request: Request) -> str:
    """The token this request's session puts in its forms ("" for a Bearer request: it needs none)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if request.headers.get("authorization") or not cookie:
        return ""
    secret: bytes | None = runtime(request).settings.secret_key
    key = secret or caller(request).secret.encode()
    return hmac.new(key, b"fluxhook-ui-csrf\0" + cookie.encode("utf-8", "surrogateescape"),
                    hashlib.sha256).hexdigest()


def csrf_problem(request: Request, given: str | None) -> str | None:
    """Why a form's POST is refused (another origin, a missing or wrong token); None if it may go on."""
    if not same_origin(request):
        return "a form from another origin was refused"
    if request.headers.get("authorization"):
        return None
    expected = csrf_token(request)
    if not given:
        return "the form's CSRF token is missing; reload the page and try again"
    if not expected or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
        return "the form's CSRF token is not this session's; reload the page and try again"
    return None

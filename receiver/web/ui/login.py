"""`/ui/login` (a form taking an API key, answered with a session cookie) and `/ui/logout` (which ends it).

A login POST whose `Origin` is another site's, or `null` (a sandboxed frame, a `data:` page: login
CSRF would log the victim into the attacker's key), is refused; the pages send
`Referrer-Policy: same-origin`, so a browser sends this origin on the form's POST."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from receiver.store import StoreUnavailable
from receiver.web.auth import match_key
from receiver.web.ui.pages import PAGE_HEADERS, render, runtime
from receiver.web.ui.sessions import SESSION_COOKIE, SESSION_MAX_AGE, end_session, session_token

__all__ = ["login", "logout"]

LOGIN_BODY_CAP = 4096


def _safe_next(raw: str | None) -> str:
    """Only a path of this UI: never another origin (`//host`, `/\\host`, a scheme)."""
    if raw and raw.startswith("/ui") and not raw.startswith(("//", "/\\")) and "\\" not in raw and raw.isprintable():
        return raw
    return "/ui"


async def login(request: Request) -> Response:
    rt = runtime(request)
    if not rt.settings.integrations.api_keys:
        return render(request, "error.html", {"title": "Not found", "message": "the UI is off"}, 404)
    if request.method == "GET":
        return render(request, "login.html", {"title": "Log in", "next": _safe_next(request.query_params.get("next")),
                                              "problem": None})
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        return PlainTextResponse("cross-origin login refused", 403)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_BODY_CAP:
            return PlainTextResponse("too large", 413)
    form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
    key = (form.get("key") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    matched = match_key(request, key) if key else None
    if matched is None:
        return render(request, "login.html", {"title": "Log in", "next": target,
                                              "problem": "That key is not valid."}, 401)
    response = RedirectResponse(target, 303, headers=PAGE_HEADERS)
    response.set_cookie(SESSION_COOKIE, session_token(request, matched, now=rt.clock()), max_age=SESSION_MAX_AGE,
                        path="/ui", httponly=True, samesite="strict", secure=_secure(request))
    return response


async def logout(request: Request) -> Response:
    try:
        await end_session(request, now=runtime(request).clock())
    except StoreUnavailable:  # the session would live on: say so, and keep the cookie until it can end
        return render(request, "error.html", {"title": "Unavailable", "message": "the ledger is unavailable, so the"
                      " session could not be ended; try logging out again shortly"}, 503, {"retry-after": "5"})
    response = RedirectResponse("/ui/login", 303, headers=PAGE_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict", secure=_secure(request))
    return response


def _secure(request: Request) -> bool:
    public = runtime(request).settings.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")

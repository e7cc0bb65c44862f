"""What every /ui page shares: who may see it, how it is rendered, and how it answers trouble.

Same keys as the /v1 API (receiver/web/auth.py): `Authorization: Bearer`, or a session cookie
(receiver/web/ui/sessions.py). No key configured: every page answers 404.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from receiver.config.keys import ApiKey
from receiver.engine.runtime import Runtime
from receiver.results import presigned_origin
from receiver.store import Job, JobSummary, StoreUnavailable, iso
from receiver.store.summary import shorten
from receiver.web.auth import api_keys, bearer_key
from receiver.web.ui.sessions import session_key

__all__ = [
    "CSP", "JOB_ID", "PAGE_HEADERS", "alt_text", "caller", "csp", "cursor_of", "file_url", "page", "page_headers",
    "parse_cursor", "prompt_of", "render", "resource", "runtime",
]

log = logging.getLogger("fluxhook.ui")

HERE = Path(__file__).parent
#: Pages: scripts and styles from this origin only (no inline script), images from here (and from the object
#: store's origin when results are in S3: the UI's file URLs answer 307 to a presigned URL, see :func:`csp`),
#: nothing framed. No Referer leaves for another origin; this one gets it, and so its own Origin on a form's
#: POST (`no-referrer` would make that `null`, which the login form refuses).
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self';"
       " form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "cache-control": "no-store",
                "referrer-policy": "same-origin"}
#: An origin a CSP source list may name: nothing that could end the directive or add a source.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")
JOB_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_CURSOR = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)~([A-Za-z0-9_.:-]{1,128})")

env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
    trim_blocks=True, lstrip_blocks=True,
)
env.filters["iso"] = iso


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


class _Off(Exception):
    """The UI is off: no API key is configured (404)."""


class _Unauthenticated(Exception):
    pass


async def _who(request: Request) -> ApiKey:
    """The key the request carries (Bearer or session cookie), kept as `request.state.api_key` for
    :func:`caller`. _Off when the UI is off; _Unauthenticated when neither is valid."""
    if not api_keys(request):
        raise _Off("the UI is off: set FLUXHOOK_API_KEYS")
    if request.headers.get("authorization"):
        key = bearer_key(request)
    else:
        key = await session_key(request, now=runtime(request).clock())
    if key is None:
        raise _Unauthenticated()
    request.state.api_key = key
    return key


def caller(request: Request) -> ApiKey:
    """The key a :func:`page` or :func:`resource` request was let in with: what it may see (receiver/config/keys.py)."""
    key: ApiKey = request.state.api_key
    return key


Handler = Callable[[Request], Awaitable[Response]]


def page(handler: Handler) -> Handler:
    """A page: 404 when the UI is off, a redirect to the login form without a session, 503 when the store is down."""

    async def endpoint(request: Request) -> Response:
        try:
            await _who(request)
            return await handler(request)
        except _Off as exc:
            return render(request, "error.html", {"title": "Not found", "message": str(exc)}, 404)
        except _Unauthenticated:
            if request.headers.get("authorization"):
                return PlainTextResponse("unauthorized", 401, headers={"www-authenticate": "Bearer"})
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/ui/login?" + urlencode({"next": target}), 303, headers=PAGE_HEADERS)
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            return render(request, "error.html", {"title": "Unavailable", "message": "the ledger is unavailable;"
                                                  " try again shortly"}, 503, {"retry-after": "5"})

    endpoint.__name__ = handler.__name__
    return endpoint


def resource(handler: Handler) -> Handler:
    """A file or stream: 404 off, 401 without a valid key or session (no redirect: images and EventSource)."""

    async def endpoint(request: Request) -> Response:
        try:
            await _who(request)
            return await handler(request)
        except _Off as exc:
            return PlainTextResponse(str(exc), 404, headers={"cache-control": "no-store"})
        except _Unauthenticated:
            return PlainTextResponse("unauthorized", 401, headers={"www-authenticate": "Bearer",
                                                                   "cache-control": "no-store"})
        except StoreUnavailable:
            return PlainTextResponse("unavailable", 503, headers={"retry-after": "5"})

    endpoint.__name__ = handler.__name__
    return endpoint


def render(request: Request, template: str, context: dict[str, Any], status: int = 200,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    html = env.get_template(template).render(request_path=request.url.path, **context)
    return HTMLResponse(html, status, headers={**page_headers(request), **(headers or {})})


def csp(image_origin: str | None) -> str:
    """The pages' CSP, with `image_origin` (the result store's presigned URLs' origin) also allowed in `img-src`:
    a browser checks each redirect of an image against it."""
    if image_origin is None or not _ORIGIN.fullmatch(image_origin):
        return CSP
    return CSP.replace("img-src 'self';", f"img-src 'self' {image_origin};", 1)


def page_headers(request: Request) -> dict[str, str]:
    """PAGE_HEADERS for this app: its CSP allows images from its result store's origin (FLUXHOOK_RESULTS)."""
    rt: Runtime | None = getattr(request.app.state, "runtime", None)
    origin = presigned_origin(rt.results) if rt is not None else None
    return {**PAGE_HEADERS, "content-security-policy": csp(origin)}


def file_url(job_id: str, n: int) -> str:
    return f"/ui/jobs/{quote(job_id, safe='')}/files/{n}"


def prompt_of(job: Job | JobSummary) -> str | None:
    """The job's prompt: in full from a job, shortened from a listing's summary (the database cut it)."""
    if isinstance(job, JobSummary):
        return job.prompt
    prompt = job.params.get("prompt") if isinstance(job.params, dict) else None
    return prompt if isinstance(prompt, str) and prompt else None


def alt_text(job: Job | JobSummary, n: int) -> str:
    prompt = shorten(prompt_of(job))
    return prompt or f"result {n} of job {job.id}"


def cursor_of(job: Job | JobSummary) -> str:
    return f"{job.created_at:.6f}~{job.id}"


def parse_cursor(raw: str | None) -> tuple[float, str] | None:
    match = _CURSOR.fullmatch(raw or "")
    return (float(match[1]), match[2]) if match else None

"""The /ui pages: gallery, job table, job page, provider panel, login; the files and event stream they use."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse

from receiver.engine.runtime import Runtime
from receiver.store import FileRecord, Job, StoreUnavailable, iso
from receiver.web.api.auth import SESSION_COOKIE, SESSION_MAX_AGE, authenticate, match_key, session_key, session_token
from receiver.web.api.errors import ApiError
from receiver.web.api.events import format_event
from receiver.web.files import result_response
from submitter.status import Status

__all__ = ["events", "gallery", "job_page", "job_table", "login", "logout", "providers_panel",
           "result_file"]

log = logging.getLogger("fluxhook.ui")

HERE = Path(__file__).parent
PAGE_SIZE = 50
GALLERY_SIZE = 24
FAILURES = frozenset({Status.FAILED, Status.MODERATED, Status.EXPIRED})
WINDOWS = (("last hour", 3600.0), ("last day", 86400.0))
#: Pages: scripts and styles from this origin only (no inline script), images from here, nothing framed.
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self';"
       " form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "cache-control": "no-store",
                "referrer-policy": "no-referrer"}
_JOB_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_FILE_N = re.compile(r"[0-9]{1,6}")
_CURSOR = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)~([A-Za-z0-9_.:-]{1,128})")
LOGIN_BODY_CAP = 4096

env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
    trim_blocks=True, lstrip_blocks=True,
)
env.filters["iso"] = iso


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


class Unauthenticated(Exception):
    pass


def _who(request: Request) -> str:
    """The key the request carries (Bearer or session cookie). ApiError 404 when the UI is off;
    Unauthenticated when neither is valid."""
    rt = _rt(request)
    if not rt.settings.integrations.api_keys:
        raise ApiError(404, "not_found", "the UI is off: set FLUXHOOK_API_KEYS")
    if request.headers.get("authorization"):
        try:
            return authenticate(request)
        except ApiError:
            raise Unauthenticated() from None
    key = session_key(request, now=rt.clock())
    if key is None:
        raise Unauthenticated()
    return key


Handler = Callable[[Request], Awaitable[Response]]


def page(handler: Handler) -> Handler:
    """A page: 404 when the UI is off, a redirect to the login form without a session, 503 when the store is down."""

    async def endpoint(request: Request) -> Response:
        try:
            _who(request)
            return await handler(request)
        except ApiError as exc:
            return render(request, "error.html", {"title": "Not found", "message": exc.message}, exc.status)
        except Unauthenticated:
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
            _who(request)
            return await handler(request)
        except ApiError as exc:
            return PlainTextResponse(exc.message, exc.status, headers={"cache-control": "no-store"})
        except Unauthenticated:
            return PlainTextResponse("unauthorized", 401, headers={"www-authenticate": "Bearer",
                                                                   "cache-control": "no-store"})
        except StoreUnavailable:
            return PlainTextResponse("unavailable", 503, headers={"retry-after": "5"})

    endpoint.__name__ = handler.__name__
    return endpoint


def render(request: Request, template: str, context: dict[str, Any], status: int = 200,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    html = env.get_template(template).render(request_path=request.url.path, **context)
    return HTMLResponse(html, status, headers={**PAGE_HEADERS, **(headers or {})})


# -- helpers -----------------------------------------------------------------------------

def file_url(job_id: str, n: int) -> str:
    return f"/ui/jobs/{quote(job_id, safe='')}/files/{n}"


def prompt_of(job: Job) -> str | None:
    prompt = job.params.get("prompt") if isinstance(job.params, dict) else None
    return prompt if isinstance(prompt, str) and prompt else None


def alt_text(job: Job, n: int) -> str:
    prompt = prompt_of(job)
    if prompt:
        return prompt if len(prompt) <= 200 else prompt[:199] + "…"
    return f"result {n} of job {job.id}"


def cursor_of(job: Job) -> str:
    return f"{job.created_at:.6f}~{job.id}"


def parse_cursor(raw: str | None) -> tuple[float, str] | None:
    match = _CURSOR.fullmatch(raw or "")
    return (float(match[1]), match[2]) if match else None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"


#: The most jobs the provider panel aggregates (the page says so when it reaches them).
PANEL_JOBS = 10_000


async def _tiles(rt: Runtime, jobs: list[Job]) -> list[dict[str, Any]]:
    tiles = []
    for job in jobs:
        for record in await rt.store.files(job.id):
            if record.stored:
                tiles.append({"job": job, "n": record.n, "src": file_url(job.id, record.n),
                              "alt": alt_text(job, record.n), "prompt": prompt_of(job),
                              "href": f"/ui/jobs/{quote(job.id, safe='')}"})
    return tiles


# -- pages -------------------------------------------------------------------------------

@page
async def gallery(request: Request) -> Response:
    rt = _rt(request)
    before = parse_cursor(request.query_params.get("before"))
    head = await rt.feed.head()  # read first: the live stream resumes here, so nothing stored since is missed
    jobs = await rt.store.list_jobs(Status.STORED, GALLERY_SIZE, before=before)  # type: ignore[call-arg]
    tiles = await _tiles(rt, jobs)
    older = ("/ui?" + urlencode({"before": cursor_of(jobs[-1])})) if len(jobs) == GALLERY_SIZE else None
    return render(request, "gallery.html", {"title": "Gallery", "tiles": tiles, "older": older,
                                            "live": before is None,
                                            "head": head})


@page
async def job_table(request: Request) -> Response:
    rt = _rt(request)
    providers = sorted(rt.settings.providers)
    statuses = [str(s) for s in Status]
    status_raw = request.query_params.get("status") or ""
    provider_raw = request.query_params.get("provider") or ""
    q = (request.query_params.get("q") or "").strip()
    problems = []
    status = Status(status_raw) if status_raw in statuses else None
    if status_raw and status is None:
        problems.append("unknown status")
    provider = provider_raw if provider_raw in providers else None
    if provider_raw and provider is None:
        problems.append("unknown provider")
    before = parse_cursor(request.query_params.get("before"))
    older = None
    if q:
        found = await rt.store.get_job(q) if _JOB_ID.fullmatch(q) else None
        jobs = [found] if found is not None and (status is None or found.status == status) and (
            provider is None or found.provider == provider) else []
    elif problems:
        jobs = []
    else:
        jobs = await rt.store.list_jobs(status, PAGE_SIZE, provider=provider, before=before)  # type: ignore[call-arg]
        if len(jobs) == PAGE_SIZE:
            older = "/ui/jobs?" + urlencode({k: v for k, v in (("status", status_raw), ("provider", provider_raw),
                                                               ("before", cursor_of(jobs[-1]))) if v})
    return render(request, "jobs.html", {
        "title": "Jobs", "jobs": jobs, "statuses": statuses, "providers": providers, "status": status_raw,
        "provider": provider_raw, "q": q, "problems": problems, "older": older, "prompt_of": prompt_of,
    }, 422 if problems else 200)


@page
async def job_page(request: Request) -> Response:
    rt = _rt(request)
    job_id = request.path_params["job_id"]
    job = await rt.store.get_job(job_id) if _JOB_ID.fullmatch(job_id) else None
    if job is None:
        return render(request, "error.html", {"title": "Not found", "message": "no such job"}, 404)
    timeline: list[dict[str, Any]] = [
        {"at": job.created_at, "what": "created", "detail": f"{job.provider} {job.model}"},
    ]
    if job.submitted_at is not None:
        timeline.append({"at": job.submitted_at, "what": "submitted",
                         "detail": f"provider job {job.provider_job_id}" if job.provider_job_id else ""})
    for event in await rt.store.audit_events(job.id, limit=200):  # type: ignore[attr-defined]
        timeline.append({"at": event["received_at"], "what": "callback received",
                         "detail": f"verdict: {event['verdict']}"})
    for outbox in await rt.store.events_after(0, job_id=job.id):  # type: ignore[attr-defined]
        deliveries = await rt.store.deliveries(event_id=outbox.id)  # type: ignore[attr-defined]
        timeline.append({"at": outbox.created_at, "what": f"event {outbox.type}", "detail": outbox.id,
                         "deliveries": deliveries})
    timeline.sort(key=lambda item: item["at"])
    files: list[FileRecord] = await rt.store.files(job.id)
    images = [{"n": f.n, "src": file_url(job.id, f.n), "alt": alt_text(job, f.n), "size": f.size,
               "content_type": f.content_type, "sha256": f.sha256} for f in files if f.stored]
    return render(request, "job.html", {
        "title": f"Job {job.id}", "job": job, "timeline": timeline, "images": images, "prompt": prompt_of(job),
        "metadata": json.dumps(job.metadata, indent=2, ensure_ascii=False, sort_keys=True) if job.metadata else None,
    })


@page
async def providers_panel(request: Request) -> Response:
    rt = _rt(request)
    now = rt.clock()
    longest = max(w for _, w in WINDOWS)
    jobs = await rt.store.jobs_since(now - longest, limit=PANEL_JOBS)  # type: ignore[attr-defined]
    rows = []
    for name in sorted(set(rt.settings.providers) | {j.provider for j in jobs}):
        for label, window in WINDOWS:
            mine = [j for j in jobs if j.provider == name and j.created_at >= now - window]
            stored = [j for j in mine if j.status == Status.STORED and j.updated_at is not None]
            from_created = [j.updated_at - j.created_at for j in stored]  # type: ignore[operator]
            from_submitted = [j.updated_at - j.submitted_at for j in stored  # type: ignore[operator]
                              if j.submitted_at is not None]
            rows.append({
                "provider": name, "window": label, "jobs": len(mine),
                "callbacks": sum(1 for j in mine if j.callback_at is not None),
                "rescued": sum(1 for j in mine if j.callback_at is None and j.polls > 0),
                "stored": len(stored), "failures": sum(1 for j in mine if j.status in FAILURES),
                "p50_created": seconds(percentile(from_created, 50)),
                "p95_created": seconds(percentile(from_created, 95)),
                "p50_submitted": seconds(percentile(from_submitted, 50)),
                "p95_submitted": seconds(percentile(from_submitted, 95)),
            })
    return render(request, "providers.html", {"title": "Providers", "rows": rows, "now": now,
                                              "capped": len(jobs) >= PANEL_JOBS})


# -- login -------------------------------------------------------------------------------

def _safe_next(raw: str | None) -> str:
    """Only a path of this UI: never another origin (`//host`, `/\\host`, a scheme)."""
    if raw and raw.startswith("/ui") and not raw.startswith(("//", "/\\")) and "\\" not in raw and raw.isprintable():
        return raw
    return "/ui"


async def login(request: Request) -> Response:
    rt = _rt(request)
    if not rt.settings.integrations.api_keys:
        return render(request, "error.html", {"title": "Not found", "message": "the UI is off"}, 404)
    if request.method == "GET":
        return render(request, "login.html", {"title": "Log in", "next": _safe_next(request.query_params.get("next")),
                                              "problem": None})
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
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
    response = RedirectResponse("/ui/login", 303, headers=PAGE_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict", secure=_secure(request))
    return response


def _secure(request: Request) -> bool:
    public = _rt(request).settings.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


# -- files and the live stream -------------------------------------------------------------

@resource
async def result_file(request: Request) -> Response:
    rt = _rt(request)
    job_id, n = request.path_params["job_id"], request.path_params["n"]
    if not (_JOB_ID.fullmatch(job_id) and _FILE_N.fullmatch(n)):
        return PlainTextResponse("not found", 404)
    record = next((f for f in await rt.store.files(job_id) if f.n == int(n) and f.stored), None)
    if record is None:
        return PlainTextResponse("not found", 404)
    return await result_response(rt.results, record)


@resource
async def events(request: Request) -> Response:
    """`job.stored` events as SSE (the gallery's live feed): like /v1/events, with the session cookie."""
    rt = _rt(request)
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    after = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else await rt.feed.head()
    if request.method == "HEAD":  # the headers of the stream, without the stream (it never ends)
        return Response(media_type="text/event-stream", headers={"cache-control": "no-cache"})
    return StreamingResponse(_frames(rt, after), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _frames(rt: Runtime, after: int) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    stream = rt.feed.stream(after, types=frozenset({"job.stored"}), heartbeat=rt.settings.integrations.sse_heartbeat)
    try:
        async with contextlib.aclosing(stream):
            async for event in stream:
                if event is None:
                    yield ": heartbeat\n\n"
                    continue
                job_id = event.job_id
                job = await rt.store.get_job(job_id)
                tiles = await _tiles(rt, [job]) if job is not None else []
                data = {"job_id": job_id, "href": f"/ui/jobs/{quote(job_id, safe='')}", "stored_at":
                        iso(job.updated_at) if job else None,
                        "provider": job.provider if job else None,
                        "images": [{"src": t["src"], "alt": t["alt"], "prompt": t["prompt"]} for t in tiles]}
                yield format_event(event.seq, event.type, json.dumps(data, separators=(",", ":")).encode())
    except StoreUnavailable as exc:
        log.warning("ui event stream ended, store unavailable: %s", exc)


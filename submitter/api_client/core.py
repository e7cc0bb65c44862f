"""The sans-IO core both /v1 clients share: request building, retries, answer parsing.

An operation is a generator that yields what to do (:class:`Send` a request, :class:`Sleep`)
and is sent the answer (or thrown the transport error); the sync and async clients are thin
loops that do it, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx

from submitter.api_client.errors import ApiError, bad_response
from submitter.api_client.models import JobFile, JobPage, JobView, loads
from submitter.backoff import RetryPolicy, parse_retry_after
from submitter.media import extension_for
from submitter.status import Status

__all__ = [
    "DEFAULT_RETRY", "MAX_HOPS", "MAX_LONG_POLL", "REDIRECTS", "RETRY_STATUS", "RUN_TIMEOUT", "ClientBase", "Core",
    "Http", "JobFailed", "Op", "Paths", "Send", "Sleep", "job_path", "run_targets", "temp_beside",
]

T = TypeVar("T")

#: Answers that mean "nothing was done, try again" (a restarting server, a proxy in between, or 429: the
#: key holds as many event streams and long-polls as the server allows).
RETRY_STATUS = frozenset({429, 502, 503, 504})
#: The longest `?wait=` the server accepts.
MAX_LONG_POLL = 60.0
#: Redirects followed for a file (to a presigned URL) before giving up.
MAX_HOPS = 5
#: Answers that send the file elsewhere (a presigned URL in object storage).
REDIRECTS = frozenset({301, 302, 303, 307, 308})

#: Every request's retries (README "The Python client": 4 tries, waits from 0.5 s doubling to 8 s, jittered;
#: a Retry-After replaces the wait, up to 60 s).
DEFAULT_RETRY = RetryPolicy(attempts=4, base=0.5, cap=8.0)
#: How long `run` waits for a job to end, by default (seconds).
RUN_TIMEOUT = 600.0
#: A job id `run` will use in a file name: what the server makes (`fh_` + hex), nothing that could leave `into`.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")

#: What `run` returns: the downloaded files' paths (an alias: inside the clients `list` is a method).
Paths = list[Path]

#: Either client's connection pool: the core only builds requests on it.
Http = httpx.Client | httpx.AsyncClient


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


#: An operation: yields what to do, is sent the answer (None after a Sleep), returns the result.
Op = Generator[Send | Sleep, httpx.Response | None, T]


def job_path(job_id: str) -> str:
    return "/v1/jobs/" + quote(job_id, safe="")


def temp_beside(path: Path) -> Path:
    """Where a download is written before it is renamed to `path`."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")


class JobFailed(Exception):
    """`run`'s job ended without files: `failed`, `moderated`, `expired` or `canceled`. `job` is the job as
    the API showed it at the end (`job.status`, and why in `job.error` / `job.note`)."""

    def __init__(self, job: JobView) -> None:
        super().__init__(f"job {job.id} ended {job.status}: {job.error or job.note or 'no reason given'}")
        self.job = job


def _suffix(file: JobFile) -> str:
    try:
        return "." + extension_for(file.content_type or "")
    except ValueError:
        return ""


def run_targets(job: JobView, into: Path) -> list[tuple[int, Path]]:
    """Where `run` writes each file of an ended job: `into/<job id>-<n>.<ext>` (a name no other job's file has),
    in file order; JobFailed unless the job ended `stored`."""
    if job.status != Status.STORED:
        raise JobFailed(job)
    if not _SAFE_NAME.fullmatch(job.id):
        raise bad_response(f"a job id that is not a plain name ({job.id[:40]!r})")
    return [(f.n, into / f"{job.id}-{f.n}{_suffix(f)}") for f in sorted(job.files, key=lambda f: f.n)]


class Core:
    """Everything both clients share: request building, retries, answer parsing."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float, sse_timeout: float,
                 retry: RetryPolicy) -> None:
        try:
            parts = httpx.URL(base_url)
        except httpx.InvalidURL:
            parts = httpx.URL()
        if parts.scheme not in ("http", "https") or not parts.host:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not api_key:
            raise ValueError("an API key is required")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.sse_timeout = sse_timeout
        self.retry = retry

    def scrub(self, text: str) -> str:
        return text.replace(self.api_key, "[redacted]")

    def build(self, http: Http, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> httpx.Request:
        headers = dict(kwargs.pop("headers", None) or {})
        if auth:
            headers["authorization"] = f"Bearer {self.api_key}"
        kwargs.setdefault("timeout", self.timeout)
        return http.build_request(method, self.base_url + path, headers=headers, **kwargs)

    # -- errors and answers --

    def error(self, response: httpx.Response) -> ApiError:
        """The contract's `{"error": {code, message, field}}`, or whatever came instead."""
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            message = self.scrub(str(error.get("message") or response.reason_phrase))
            where = error.get("field")
            return ApiError(response.status_code, error["code"], message, where if isinstance(where, str) else None)
        words = self.scrub(response.text.strip()[:300]) if body is None else ""
        return ApiError(response.status_code, f"http_{response.status_code}", words or response.reason_phrase)

    def object(self, response: httpx.Response, *expected: int) -> dict[str, Any]:
        if response.status_code not in expected:
            raise self.error(response)
        data = loads(response.content, "a body that is not JSON", response.status_code)
        if not isinstance(data, dict):
            raise bad_response("a body that is not a JSON object", response.status_code)
        return data

    def unreachable(self, exc: BaseException) -> ApiError:
        return ApiError(None, "unreachable", self.scrub(f"no answer from {self.base_url} ({type(exc).__name__})"))

    # -- operations --

    def retrying(self, build: Callable[[], httpx.Request]) -> Op[httpx.Response]:
        """Send until an answer that is not "try again"; safe because every request is idempotent
        (GETs, cancel, and creates carrying one Idempotency-Key over all attempts)."""
        retry_after: float | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                yield Sleep(self.retry.delay(attempt - 1, retry_after))
            last = attempt + 1 == self.retry.attempts
            try:
                response = yield Send(build())
            except httpx.TransportError as exc:
                if last:
                    raise self.unreachable(exc) from None
                retry_after = None
                continue
            if response is None:
                raise AssertionError("a Send is answered with a response")
            if response.status_code in RETRY_STATUS and not last:
                retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                continue
            return response
        raise AssertionError("RetryPolicy.attempts must be at least 1")

    def create(self, http: Http, provider: str, model: str, params: Mapping[str, Any],
               events: Sequence[str] | None, metadata: Mapping[str, Any] | None,
               idempotency_key: str | None) -> Op[JobView]:
        view, _ = yield from self.create_once(http, provider, model, params, events, metadata, idempotency_key)
        return view

    def create_once(self, http: Http, provider: str, model: str, params: Mapping[str, Any],
                    events: Sequence[str] | None, metadata: Mapping[str, Any] | None,
                    idempotency_key: str | None) -> Op[tuple[JobView, bool]]:
        """:meth:`create`, and whether this call made the job (False: the Idempotency-Key's earlier job)."""
        body: dict[str, Any] = {"provider": provider, "model": model, "params": dict(params)}
        if events is not None:
            body["events"] = list(events)
        if metadata is not None:
            body["metadata"] = dict(metadata)
        headers = {"idempotency-key": idempotency_key or f"fhc-{uuid.uuid4().hex}"}
        response = yield from self.retrying(lambda: self.build(http, "POST", "/v1/jobs", json=body, headers=headers))
        return JobView.from_json(self.object(response, 200, 201)), response.status_code == 201

    def get(self, http: Http, job_id: str, wait: float | None) -> Op[JobView]:
        kwargs: dict[str, Any] = {}
        if wait is not None:
            wait = min(max(wait, 0.0), MAX_LONG_POLL)
            text = f"{wait:.3f}".rstrip("0").rstrip(".")  # plain decimal: never 1e-05
            kwargs = {"params": {"wait": text}, "timeout": httpx.Timeout(self.timeout, read=wait + self.timeout)}
        response = yield from self.retrying(lambda: self.build(http, "GET", job_path(job_id), **kwargs))
        return JobView.from_json(self.object(response, 200))

    def list(self, http: Http, status: str | None, provider: str | None, limit: int,
             cursor: str | None) -> Op[JobPage]:
        params = {"limit": str(limit)}
        for key, value in (("status", status), ("provider", provider), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        response = yield from self.retrying(lambda: self.build(http, "GET", "/v1/jobs", params=params))
        data = self.object(response, 200)
        jobs, after = data.get("jobs"), data.get("next_cursor")
        if not isinstance(jobs, list) or not (after is None or isinstance(after, str)):
            raise bad_response("a job list without `jobs` and `next_cursor`")
        return [JobView.from_json(j) for j in jobs], after or None

    def cancel(self, http: Http, job_id: str) -> Op[JobView]:
        response = yield from self.retrying(lambda: self.build(http, "POST", job_path(job_id) + "/cancel"))
        return JobView.from_json(self.object(response, 200))

    # -- files --

    def file_request(self, http: Http, job_id: str, n: int) -> httpx.Request:
        return self.build(http, "GET", f"{job_path(job_id)}/files/{int(n)}")

    def redirect(self, http: Http, response: httpx.Response) -> httpx.Request | None:
        """The next hop of a redirect, WITHOUT our Authorization header: a presigned URL carries its own
        credentials, and our key must never reach object storage (or whoever the Location names)."""
        location = response.headers.get("location")
        if response.status_code not in REDIRECTS or not location:
            return None
        target = response.request.url.join(location)
        if target.scheme not in ("http", "https"):
            raise bad_response(f"a redirect to a {target.scheme!r} URL", response.status_code)
        return http.build_request("GET", target, timeout=self.timeout)


class ClientBase:
    """What both clients are built from: a :class:`Core` (the key never shows in their repr)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0, sse_timeout: float = 60.0,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self._core = Core(base_url, api_key, timeout=timeout, sse_timeout=sse_timeout, retry=retry)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A client for the API at `FLUXHOOK_API_URL` with the key `FLUXHOOK_API_KEY` (the variables the
        `fluxhook` command reads); ValueError naming the variable that is missing. `options` as the constructor's."""
        env = os.environ if env is None else env
        url, key = env.get("FLUXHOOK_API_URL", "").strip(), env.get("FLUXHOOK_API_KEY", "").strip()
        if not url:
            raise ValueError("FLUXHOOK_API_URL is not set: the fluxhook API's address, e.g. http://127.0.0.1:8000")
        if not key:
            raise ValueError("FLUXHOOK_API_KEY is not set: one of the keys in the server's FLUXHOOK_API_KEYS")
        try:
            return cls(url, key, **options)
        except ValueError as exc:  # the one thing the constructor can refuse here: the address
            raise ValueError(f"FLUXHOOK_API_URL: {exc}") from None

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.base_url!r}, api_key='**********')"

"""A typed client for fluxhook's own `/v1` HTTP API (see /work/notes/api-contract.md).

For hosts that have no database access: submit a job, watch it through the SSE
event stream, fetch its files. One sans-IO core builds every request and parses
every answer; :class:`AsyncFluxhookClient` and :class:`FluxhookClient` are thin
send loops around it, so the two cannot drift apart.

Only httpx and the standard library (plus :mod:`submitter.backoff`): this module
must be importable without the receiver.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from submitter.backoff import RetryPolicy, parse_retry_after

__all__ = [
    "TERMINAL_STATUSES", "ApiError", "ApiEvent", "AsyncFluxhookClient", "FluxhookClient", "JobFile", "JobPage",
    "JobView", "SSEDecoder", "ServerSentEvent",
]

T = TypeVar("T")

#: Statuses after which a job never changes again.
TERMINAL_STATUSES = frozenset({"stored", "failed", "moderated", "expired", "canceled"})
#: Answers that mean "nothing was done, try again" (a restarting server, a proxy in between).
RETRY_STATUS = frozenset({502, 503, 504})
#: The server asks for this itself (`retry: 2000`); used until it has said so.
DEFAULT_SSE_RETRY = 2.0
#: Consecutive failed (re)connections of an event stream before giving up.
SSE_MAX_FAILURES = 6
#: The longest `?wait=` the server accepts.
MAX_LONG_POLL = 60.0
_MAX_HOPS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class ApiError(Exception):
    """An error answer of the API (or none at all: `status` None, code `unreachable`).

    `message` is the server's words with the API key cut out, so it is safe to print or log.
    """

    def __init__(self, status: int | None, code: str, message: str, field: str | None = None) -> None:
        super().__init__(status, code, message, field)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        prefix = f"HTTP {self.status} " if self.status is not None else ""
        return f"{prefix}{self.code}: {self.message}{where}"


def _bad(what: str, status: int | None = None) -> ApiError:
    return ApiError(status, "bad_response", f"unexpected answer from the API: {what}")


@dataclass(frozen=True)
class JobFile:
    n: int
    size: int | None
    sha256: str | None
    content_type: str | None
    location: str | None
    url: str | None

    @classmethod
    def from_json(cls, data: Any) -> JobFile:
        if not isinstance(data, dict) or not isinstance(data.get("n"), int):
            raise _bad("a file without an integer `n`")
        return cls(data["n"], data.get("size"), data.get("sha256"), data.get("content_type"),
                   data.get("location"), data.get("url"))


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it (the same JSON in answers and in event `data`)."""

    id: str
    provider: str
    model: str
    status: str
    error: str | None = None
    note: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    provider_job_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    submitted_at: str | None = None
    files: tuple[JobFile, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> JobView:
        """Unknown keys are ignored, so a newer server does not break an older client."""
        if not isinstance(data, dict):
            raise _bad("a job that is not an object")
        for key in ("id", "status"):
            if not isinstance(data.get(key), str):
                raise _bad(f"a job without a string `{key}`")
        files = data.get("files") or []
        if not isinstance(files, list):
            raise _bad("a job whose `files` is not a list")
        metadata = data.get("metadata") or {}
        return cls(
            id=data["id"], provider=str(data.get("provider", "")), model=str(data.get("model", "")),
            status=data["status"], error=data.get("error"), note=data.get("note"),
            metadata=metadata if isinstance(metadata, dict) else {}, provider_job_id=data.get("provider_job_id"),
            created_at=data.get("created_at"), updated_at=data.get("updated_at"),
            submitted_at=data.get("submitted_at"), files=tuple(JobFile.from_json(f) for f in files),
        )

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change (stored, failed, moderated, expired, canceled)."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class ApiEvent:
    """One outbox event: `seq` orders them and resumes a stream; `data` is the job at that moment."""

    seq: int
    id: str
    type: str
    created_at: str | None
    data: JobView

    @classmethod
    def from_json(cls, data: Any) -> ApiEvent:
        if not isinstance(data, dict) or not isinstance(data.get("seq"), int) or not isinstance(data.get("type"), str):
            raise _bad("an event without an integer `seq` and a string `type`")
        return cls(data["seq"], str(data.get("id", "")), data["type"], data.get("created_at"),
                   JobView.from_json(data.get("data")))


#: One page of `list`: the jobs and the cursor of the next page (None: that was the last).
JobPage = tuple[list[JobView], str | None]


# -- server-sent events ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSentEvent:
    type: str
    data: str
    last_id: str | None


class SSEDecoder:
    """The WHATWG event-stream parser, fed bytes as they arrive.

    Lines end in CR, LF or CRLF (also split across chunks); `:` lines are comments;
    `data` lines join with newlines; the last event id survives events and reconnections
    (it is what `Last-Event-ID` resumes from), as does the `retry` delay in seconds.
    """

    _BREAK = re.compile(r"\r\n|\r|\n")

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self.retry: float | None = None
        self._id_buffer = last_id
        self.reset()

    def reset(self) -> None:
        """A new connection: what was half-received on the last one is discarded."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._after_cr = False
        self._first = True
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._decoder.decode(chunk)
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
        if not text:
            return []
        self._after_cr = text.endswith("\r")
        lines = self._BREAK.split(self._partial + text)
        self._partial = lines.pop()
        return [event for event in map(self.line, lines) if event is not None]

    def line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value) / 1000
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        self.last_id = self._id_buffer
        data, kind = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(kind or "message", "\n".join(data), self.last_id)


class _SSEUnavailable(ApiError):
    """The server has no event stream (or something in between turned it into a plain answer):
    `wait` long-polls instead; `events` callers see an ApiError with code `no_event_stream`."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code, "no_event_stream",
                         f"{response.request.url.path} answered {response.status_code} "
                         f"{response.headers.get('content-type', '(no content type)')}, not an event stream")


_CONNECTED = object()  # yielded by the subscription loops when a stream is open: re-check what was missed


class _Subscription:
    """The state of one event subscription across reconnections, shared by both clients."""

    def __init__(self, core: _Core, job: str | None, types: Sequence[str] | None, after: int | None) -> None:
        self.core = core
        self.params: dict[str, str] = {}
        if job is not None:
            self.params["job"] = job
        if types:
            self.params["types"] = ",".join(types)
        self.decoder = SSEDecoder(None if after is None else str(after))
        self.failures = 0
        self.retry_after: float | None = None

    def request(self, http: httpx.Client | httpx.AsyncClient, read_timeout: float | None = None) -> httpx.Request:
        headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
        if self.decoder.last_id:
            headers["last-event-id"] = self.decoder.last_id
        timeout = httpx.Timeout(self.core.timeout, read=read_timeout or self.core.sse_timeout)
        return self.core.build(http, "GET", "/v1/events", params=self.params, headers=headers, timeout=timeout)

    def classify(self, response: httpx.Response) -> str:
        """`open`, `retry` (reconnect later), `unavailable` (no SSE here) or `error` (read the body, raise)."""
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code == 200:
            if kind != "text/event-stream":
                return "unavailable"
            self.decoder.reset()
            self.failures = 0
            return "open"
        if response.status_code in RETRY_STATUS:
            self.retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
            return "retry"
        if response.status_code in (405, 406, 501) or (response.status_code == 404 and kind != "application/json"):
            return "unavailable"  # a 404 of the contract is JSON (`not_found`: the API is off); this is no route
        return "error"

    def feed(self, chunk: bytes) -> list[ApiEvent]:
        return [ApiEvent.from_json(_loads(e.data, "an event that is not JSON")) for e in self.decoder.feed(chunk)]

    def dropped(self, exc: BaseException | None = None) -> float:
        """The connection failed or ended: seconds to wait before reconnecting (raises when it keeps failing)."""
        self.failures += 1
        if self.failures > SSE_MAX_FAILURES:
            reason = type(exc).__name__ if exc is not None else "the connection keeps failing"
            raise ApiError(None, "unreachable", f"event stream at {self.core.base_url}: {reason}")
        base = self.decoder.retry if self.decoder.retry is not None else DEFAULT_SSE_RETRY
        delay = base if self.failures == 1 else min(base * 2 ** (self.failures - 1), 30.0)
        if self.retry_after is not None:
            delay = max(delay, min(self.retry_after, self.core.retry.max_retry_after))
            self.retry_after = None
        return delay


# -- the sans-IO core -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Send:
    request: httpx.Request


@dataclass(frozen=True)
class _Sleep:
    seconds: float


#: An operation: yields what to do, is sent the answer (or thrown the transport error), returns the result.
_Op = Generator[_Send | _Sleep, Any, T]


def _loads(text: str | bytes, what: str, status: int | None = None) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _bad(what, status) from None


class _Core:
    """Everything both clients share: request building, retries, answer parsing."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float, sse_timeout: float,
                 retry: RetryPolicy) -> None:
        parts = httpx.URL(base_url)
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

    def build(self, http: httpx.Client | httpx.AsyncClient, method: str, path: str, *, auth: bool = True,
              **kwargs: Any) -> httpx.Request:
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
        data = _loads(response.content, "a body that is not JSON", response.status_code)
        if not isinstance(data, dict):
            raise _bad("a body that is not a JSON object", response.status_code)
        return data

    def unreachable(self, exc: BaseException) -> ApiError:
        return ApiError(None, "unreachable", self.scrub(f"no answer from {self.base_url} ({type(exc).__name__})"))

    # -- operations --

    def retrying(self, build: Callable[[], httpx.Request]) -> _Op[httpx.Response]:
        """Send until an answer that is not "try again"; safe because every request is idempotent
        (GETs, cancel, and creates carrying one Idempotency-Key over all attempts)."""
        retry_after: float | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                yield _Sleep(self.retry.delay(attempt - 1, retry_after))
            last = attempt + 1 == self.retry.attempts
            try:
                response = yield _Send(build())
            except httpx.TransportError as exc:
                if last:
                    raise self.unreachable(exc) from None
                retry_after = None
                continue
            if response.status_code in RETRY_STATUS and not last:
                retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
                continue
            return response
        raise AssertionError("RetryPolicy.attempts must be at least 1")

    def create(self, http: Any, provider: str, model: str, params: Mapping[str, Any], events: Sequence[str] | None,
               metadata: Mapping[str, Any] | None, idempotency_key: str | None) -> _Op[JobView]:
        body: dict[str, Any] = {"provider": provider, "model": model, "params": dict(params)}
        if events is not None:
            body["events"] = list(events)
        if metadata is not None:
            body["metadata"] = dict(metadata)
        headers = {"idempotency-key": idempotency_key or f"fhc-{uuid.uuid4().hex}"}
        response = yield from self.retrying(lambda: self.build(http, "POST", "/v1/jobs", json=body, headers=headers))
        return JobView.from_json(self.object(response, 200, 201))

    def get(self, http: Any, job_id: str, wait: float | None) -> _Op[JobView]:
        kwargs: dict[str, Any] = {}
        if wait is not None:
            wait = min(max(wait, 0.0), MAX_LONG_POLL)
            text = f"{wait:.3f}".rstrip("0").rstrip(".")  # plain decimal: never 1e-05
            kwargs = {"params": {"wait": text}, "timeout": httpx.Timeout(self.timeout, read=wait + self.timeout)}
        response = yield from self.retrying(lambda: self.build(http, "GET", _job_path(job_id), **kwargs))
        return JobView.from_json(self.object(response, 200))

    def list(self, http: Any, status: str | None, provider: str | None, limit: int,
             cursor: str | None) -> _Op[JobPage]:
        params = {"limit": str(limit)}
        for key, value in (("status", status), ("provider", provider), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        response = yield from self.retrying(lambda: self.build(http, "GET", "/v1/jobs", params=params))
        data = self.object(response, 200)
        jobs, after = data.get("jobs"), data.get("next_cursor")
        if not isinstance(jobs, list) or not (after is None or isinstance(after, str)):
            raise _bad("a job list without `jobs` and `next_cursor`")
        return [JobView.from_json(j) for j in jobs], after or None

    def cancel(self, http: Any, job_id: str) -> _Op[JobView]:
        response = yield from self.retrying(lambda: self.build(http, "POST", _job_path(job_id) + "/cancel"))
        return JobView.from_json(self.object(response, 200))

    # -- files --

    def file_request(self, http: Any, job_id: str, n: int) -> httpx.Request:
        return self.build(http, "GET", f"{_job_path(job_id)}/files/{int(n)}")

    def redirect(self, http: Any, response: httpx.Response) -> httpx.Request | None:
        """The next hop of a redirect, WITHOUT our Authorization header: a presigned URL carries its own
        credentials, and our key must never reach object storage (or whoever the Location names)."""
        location = response.headers.get("location")
        if response.status_code not in _REDIRECTS or not location:
            return None
        target = response.request.url.join(location)
        if target.scheme not in ("http", "https"):
            raise _bad(f"a redirect to a {target.scheme!r} URL", response.status_code)
        return http.build_request("GET", target, timeout=self.timeout)


def _job_path(job_id: str) -> str:
    return "/v1/jobs/" + quote(job_id, safe="")


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")


# -- the clients ------------------------------------------------------------------------------------------------


class _Base:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0, sse_timeout: float = 60.0,
                 retry: RetryPolicy = RetryPolicy(attempts=4, base=0.5, cap=8.0)) -> None:
        self._core = _Core(base_url, api_key, timeout=timeout, sse_timeout=sse_timeout, retry=retry)

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.base_url!r}, api_key='**********')"


class AsyncFluxhookClient(_Base):
    """The /v1 API over an `httpx.AsyncClient` it owns (close it: `async with` or :meth:`aclose`)."""

    def __init__(self, base_url: str, api_key: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.AsyncClient(transport=transport, follow_redirects=False)
        self._sleep = sleep

    async def __aenter__(self) -> AsyncFluxhookClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: _Op[T]) -> T:
        reply: Any = None
        while True:
            try:
                step = op.throw(reply) if isinstance(reply, BaseException) else op.send(reply)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, _Sleep):
                await self._sleep(step.seconds)
                reply = None
                continue
            try:
                reply = await self._http.send(step.request)
            except httpx.TransportError as exc:
                reply = exc

    async def create(self, provider: str, model: str, params: Mapping[str, Any], *,
                     events: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None) -> JobView:
        """Submit a job; retried with one Idempotency-Key, so a lost answer never makes a second job."""
        return await self._run(self._core.create(self._http, provider, model, params, events, metadata,
                                                 idempotency_key))

    async def get(self, job_id: str, *, wait: float | None = None) -> JobView:
        """The job now, or with `wait` (≤ 60 s) as soon as it is terminal or the wait is over."""
        return await self._run(self._core.get(self._http, job_id, wait))

    async def list(self, status: str | None = None, provider: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> JobPage:
        return await self._run(self._core.list(self._http, status, provider, limit, cursor))

    async def iter_jobs(self, status: str | None = None, provider: str | None = None,
                        page_size: int = 50) -> AsyncIterator[JobView]:
        """Every job, newest first, page after page."""
        cursor: str | None = None
        while True:
            jobs, cursor = await self.list(status, provider, page_size, cursor)
            for job in jobs:
                yield job
            if cursor is None:
                return

    async def cancel(self, job_id: str) -> JobView:
        return await self._run(self._core.cancel(self._http, job_id))

    @contextlib.asynccontextmanager
    async def _open_file(self, job_id: str, n: int) -> AsyncIterator[httpx.Response]:
        request = self._core.file_request(self._http, job_id, n)
        for _ in range(_MAX_HOPS):
            response = await self._http.send(request, stream=True)
            try:
                following = self._core.redirect(self._http, response)
                if following is None:
                    if not response.is_success:
                        await response.aread()
                        raise self._core.error(response)
                    yield response
                    return
            finally:
                await response.aclose()
            request = following
        raise _bad("too many redirects")

    async def download(self, job_id: str, n: int = 0) -> bytes:
        async with self._open_file(job_id, n) as response:
            return await response.aread()

    async def download_to(self, job_id: str, n: int, path: str | os.PathLike[str]) -> Path:
        """Stream file `n` into `path` (written beside it, then renamed: never a half file under that name)."""
        target = Path(path)
        temp = _temp_beside(target)
        out = await asyncio.to_thread(temp.open, "wb")
        try:
            async with self._open_file(job_id, n) as response:
                async for chunk in response.aiter_bytes():
                    await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, temp, target)
        except BaseException:
            out.close()
            temp.unlink(missing_ok=True)
            raise
        return target

    async def _subscribe(self, sub: _Subscription) -> AsyncIterator[ApiEvent | object]:
        while True:
            failure: BaseException | None = None
            try:
                response = await self._http.send(sub.request(self._http), stream=True)
                try:
                    verdict = sub.classify(response)
                    if verdict == "error":
                        await response.aread()
                        raise self._core.error(response)
                    if verdict == "unavailable":
                        raise _SSEUnavailable(response)
                    if verdict == "open":
                        yield _CONNECTED
                        async for chunk in response.aiter_bytes():
                            for event in sub.feed(chunk):
                                yield event
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                failure = exc
            await self._sleep(sub.dropped(failure))

    async def events(self, *, job: str | None = None, types: Sequence[str] | None = None,
                     after: int | None = None) -> AsyncIterator[ApiEvent]:
        """Events as they happen (after `after` if given), reconnecting with Last-Event-ID when dropped.
        Use with `contextlib.aclosing` when breaking out early, so the connection closes at once."""
        async with contextlib.aclosing(self._subscribe(_Subscription(self._core, job, types, after))) as items:
            async for item in items:
                if isinstance(item, ApiEvent):
                    yield item

    async def wait(self, job_id: str, timeout: float) -> JobView:  # noqa: ASYNC109 (the same call as the sync client)
        """The job once terminal, from its event stream; TimeoutError after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self._wait(job_id)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g} s") from None

    async def _wait(self, job_id: str) -> JobView:
        view = await self.get(job_id)
        if view.terminal:
            return view
        try:
            sub = _Subscription(self._core, job_id, None, None)
            async with contextlib.aclosing(self._subscribe(sub)) as items:
                async for item in items:
                    # Connected (again): whatever happened before the stream started is in the job itself.
                    view = await self.get(job_id) if item is _CONNECTED else _job_of(item, job_id, view)
                    if view.terminal:
                        return view
        except _SSEUnavailable:
            pass
        while not view.terminal:  # no event stream here: long-poll
            view = await self.get(job_id, wait=MAX_LONG_POLL)
        return view


class FluxhookClient(_Base):
    """The same as :class:`AsyncFluxhookClient`, blocking, over an `httpx.Client` it owns."""

    def __init__(self, base_url: str, api_key: str, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(transport=transport, follow_redirects=False)
        self._sleep = sleep
        self._clock = clock

    def __enter__(self) -> FluxhookClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: _Op[T]) -> T:
        reply: Any = None
        while True:
            try:
                step = op.throw(reply) if isinstance(reply, BaseException) else op.send(reply)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, _Sleep):
                self._sleep(step.seconds)
                reply = None
                continue
            try:
                reply = self._http.send(step.request)
            except httpx.TransportError as exc:
                reply = exc

    def create(self, provider: str, model: str, params: Mapping[str, Any], *, events: Sequence[str] | None = None,
               metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> JobView:
        """Submit a job; retried with one Idempotency-Key, so a lost answer never makes a second job."""
        return self._run(self._core.create(self._http, provider, model, params, events, metadata, idempotency_key))

    def get(self, job_id: str, *, wait: float | None = None) -> JobView:
        """The job now, or with `wait` (≤ 60 s) as soon as it is terminal or the wait is over."""
        return self._run(self._core.get(self._http, job_id, wait))

    def list(self, status: str | None = None, provider: str | None = None, limit: int = 50,
             cursor: str | None = None) -> JobPage:
        return self._run(self._core.list(self._http, status, provider, limit, cursor))

    def iter_jobs(self, status: str | None = None, provider: str | None = None,
                  page_size: int = 50) -> Iterator[JobView]:
        """Every job, newest first, page after page."""
        cursor: str | None = None
        while True:
            jobs, cursor = self.list(status, provider, page_size, cursor)
            yield from jobs
            if cursor is None:
                return

    def cancel(self, job_id: str) -> JobView:
        return self._run(self._core.cancel(self._http, job_id))

    @contextlib.contextmanager
    def _open_file(self, job_id: str, n: int) -> Iterator[httpx.Response]:
        request = self._core.file_request(self._http, job_id, n)
        for _ in range(_MAX_HOPS):
            response = self._http.send(request, stream=True)
            try:
                following = self._core.redirect(self._http, response)
                if following is None:
                    if not response.is_success:
                        response.read()
                        raise self._core.error(response)
                    yield response
                    return
            finally:
                response.close()
            request = following
        raise _bad("too many redirects")

    def download(self, job_id: str, n: int = 0) -> bytes:
        with self._open_file(job_id, n) as response:
            return response.read()

    def download_to(self, job_id: str, n: int, path: str | os.PathLike[str]) -> Path:
        """Stream file `n` into `path` (written beside it, then renamed: never a half file under that name)."""
        target = Path(path)
        temp = _temp_beside(target)
        try:
            with temp.open("wb") as out, self._open_file(job_id, n) as response:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return target

    def _subscribe(self, sub: _Subscription, deadline: float | None = None) -> Iterator[ApiEvent | object]:
        while True:
            failure: BaseException | None = None
            try:
                response = self._http.send(sub.request(self._http, self._left(deadline)), stream=True)
                try:
                    verdict = sub.classify(response)
                    if verdict == "error":
                        response.read()
                        raise self._core.error(response)
                    if verdict == "unavailable":
                        raise _SSEUnavailable(response)
                    if verdict == "open":
                        yield _CONNECTED
                        for chunk in response.iter_bytes():
                            yield from sub.feed(chunk)
                            self._left(deadline)
                finally:
                    response.close()
            except httpx.TransportError as exc:
                self._left(deadline)
                failure = exc
            pause = sub.dropped(failure)
            left = self._left(deadline)
            self._sleep(pause if left is None else min(pause, left))

    def _left(self, deadline: float | None) -> float | None:
        """Seconds until `deadline` (None: no deadline); TimeoutError once it has passed."""
        if deadline is None:
            return None
        left = deadline - self._clock()
        if left <= 0:
            raise TimeoutError
        return left

    def events(self, *, job: str | None = None, types: Sequence[str] | None = None,
               after: int | None = None) -> Iterator[ApiEvent]:
        """Events as they happen (after `after` if given), reconnecting with Last-Event-ID when dropped.
        Use with `contextlib.closing` when breaking out early, so the connection closes at once."""
        with contextlib.closing(self._subscribe(_Subscription(self._core, job, types, after))) as items:
            for item in items:
                if isinstance(item, ApiEvent):
                    yield item

    def wait(self, job_id: str, timeout: float) -> JobView:
        """The job once terminal, from its event stream; TimeoutError after `timeout` seconds
        (checked between reads; a read never blocks past it)."""
        deadline = self._clock() + timeout
        try:
            return self._wait(job_id, deadline)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g} s") from None

    def _wait(self, job_id: str, deadline: float) -> JobView:
        view = self.get(job_id)
        if view.terminal:
            return view
        try:
            with contextlib.closing(self._subscribe(_Subscription(self._core, job_id, None, None), deadline)) as items:
                for item in items:
                    view = self.get(job_id) if item is _CONNECTED else _job_of(item, job_id, view)
                    if view.terminal:
                        return view
        except _SSEUnavailable:
            pass
        while not view.terminal:  # no event stream here: long-poll
            left = self._left(deadline) or 0.0
            view = self.get(job_id, wait=min(left, MAX_LONG_POLL))
        return view


def _job_of(item: Any, job_id: str, current: JobView) -> JobView:
    """The job as an event shows it (a stream filtered by job only carries that job, but be sure)."""
    return item.data if isinstance(item, ApiEvent) and item.data.id == job_id else current

"""One event subscription across reconnections (`GET /v1/events`), sans IO, shared by both clients."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from submitter.api_client.core import RETRY_STATUS, Core, Http
from submitter.api_client.errors import ApiError
from submitter.api_client.models import ApiEvent, JobView, loads
from submitter.api_client.sse import SSEDecoder
from submitter.backoff import Backoff, parse_retry_after

__all__ = [
    "CONNECTED", "DEFAULT_SSE_RETRY", "SSE_MAX_FAILURES", "SSE_MAX_RETRY", "Connected", "SSEUnavailable",
    "Subscription", "job_of",
]

#: The server asks for this itself (`retry: 2000`); used until it has said so.
DEFAULT_SSE_RETRY = 2.0
#: Consecutive failed (re)connections of an event stream before giving up.
SSE_MAX_FAILURES = 6
#: Reconnection waits double up to this (seconds), unless the server's `retry` asks for longer.
SSE_MAX_RETRY = 30.0


class Connected:
    """Yielded by the subscription loops when a stream is open: re-check what was missed."""


CONNECTED = Connected()


class SSEUnavailable(ApiError):
    """The server has no event stream (or something in between turned it into a plain answer):
    `wait` long-polls instead; `events` callers see an ApiError with code `no_event_stream`."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code, "no_event_stream",
                         f"{response.request.url.path} answered {response.status_code} "
                         f"{response.headers.get('content-type', '(no content type)')}, not an event stream")


class Subscription:
    """The state of one event subscription across reconnections, shared by both clients."""

    def __init__(self, core: Core, job: str | None, types: Sequence[str] | None, after: int | None) -> None:
        self.core = core
        self.params: dict[str, str] = {}
        if job is not None:
            self.params["job"] = job
        if types:
            self.params["types"] = ",".join(types)
        self.decoder = SSEDecoder(None if after is None else str(after))
        self.failures = 0
        self.retry_after: float | None = None

    def request(self, http: Http, read_timeout: float | None = None) -> httpx.Request:
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
        return [ApiEvent.from_json(loads(e.data, "an event that is not JSON")) for e in self.decoder.feed(chunk)]

    def dropped(self, exc: BaseException | None = None) -> float:
        """The connection failed or ended: seconds to wait before reconnecting (raises when it keeps failing)."""
        self.failures += 1
        if self.failures > SSE_MAX_FAILURES:
            reason = type(exc).__name__ if exc is not None else "the connection keeps failing"
            raise ApiError(None, "unreachable", f"event stream at {self.core.base_url}: {reason}")
        base = self.decoder.retry if self.decoder.retry is not None else DEFAULT_SSE_RETRY
        # The server's `retry` doubling to SSE_MAX_RETRY (or staying at a longer `retry`); a 503's
        # Retry-After is the least wait.
        backoff = Backoff(base=base, cap=max(base, SSE_MAX_RETRY), jitter=False,
                          max_retry_after=self.core.retry.max_retry_after, retry_after_replaces=False)
        retry_after, self.retry_after = self.retry_after, None
        return backoff.delay(self.failures - 1, retry_after)


def job_of(item: ApiEvent | Connected, job_id: str, current: JobView) -> JobView:
    """The job as an event shows it (a stream filtered by job only carries that job, but be sure)."""
    return item.data if isinstance(item, ApiEvent) and item.data.id == job_id else current

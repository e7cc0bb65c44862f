"""Webhooks out: Standard Webhooks POSTs of the event envelope, one sink per FLUXHOOK_FORWARD_URL entry.

Each POST carries ``webhook-id`` (the event id, the same on every retry), ``webhook-timestamp``
and ``webhook-signature`` (HMAC with FLUXHOOK_FORWARD_SECRET), so receivers verify with any
Standard Webhooks library and deduplicate by id. Redirects are not followed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib import metadata
from typing import TYPE_CHECKING

import anyio
import httpx

from receiver.sinks.base import Attempt, describe, short_hash, url_secrets
from submitter.backoff import parse_retry_after
from submitter.signing import sign_standard
from submitter.urls import display_url

if TYPE_CHECKING:
    from receiver.config.integrations import Integrations
    from receiver.store import OutboxEvent

__all__ = ["WebhookSink", "webhook_sinks"]

#: At most this much of a response body is read (and then dropped).
BODY_LIMIT = 4096
#: Statuses worth retrying besides 5xx.
RETRYABLE = frozenset({408, 425, 429})


def _version() -> str:
    try:
        return metadata.version("fluxhook")
    except metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"fluxhook/{_version()}"


#: How a transport failure reads, most specific first (a text not ending in ")" gets the scrubbed cause).
_FAILURES: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.ConnectTimeout, "connect timeout (no connection in time)"),
    (httpx.ReadTimeout, "read timeout (no response in time)"),
    (httpx.WriteTimeout, "write timeout (request not sent in time)"),
    (httpx.PoolTimeout, "pool timeout (no free connection in time)"),
    (httpx.ConnectError, "connect error: "),
    (httpx.RemoteProtocolError, "protocol error: "),
)


class _SharedClient:
    """One httpx client for every webhook sink of a configuration; closed with the last of them."""

    def __init__(self, given: httpx.AsyncClient | None, timeout: float) -> None:
        self._given = given
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = given
        self._users = 0

    def acquire(self) -> httpx.AsyncClient:
        self._users += 1
        return self.get()

    def get(self) -> httpx.AsyncClient:
        if self._client is None or (self._client.is_closed and self._given is None):
            # Keep as many connections open as the relay sends at once per endpoint (a claim's worth),
            # or every batch would open (and close) the ones beyond httpx's default 20.
            self._client = httpx.AsyncClient(
                trust_env=False, follow_redirects=False, timeout=self._timeout,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        return self._client

    async def release(self) -> None:
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self._given is None and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


class WebhookSink:
    kind = "webhook"

    def __init__(self, url: str, secret: str, types: frozenset[str], timeout: float,
                 http: httpx.AsyncClient | _SharedClient | None = None) -> None:
        self._url = url
        self.name = "webhook:" + short_hash(url)
        self.display = display_url(url)
        self.types = types
        self._secret = secret
        self._timeout = timeout
        self._http = http if isinstance(http, _SharedClient) else _SharedClient(http, timeout)
        self._started = False
        self._secrets = [*url_secrets(url), secret, secret.removeprefix("whsec_")]

    def __repr__(self) -> str:
        return f"WebhookSink({self.display!r})"

    async def start(self) -> None:
        if not self._started:
            self._http.acquire()
            self._started = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._http.release()

    def headers(self, event: OutboxEvent, body: bytes, timestamp: int) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(self._secret, event.id, timestamp, body),
        }

    async def deliver(self, event: OutboxEvent) -> Attempt:
        body = event.body()
        headers = self.headers(event, body, int(time.time()))
        if not self._started:
            await self.start()
        began = time.perf_counter()
        client = self._http.get()
        try:
            # The whole attempt, not each read, is bounded: a server trickling bytes cannot hold it.
            with anyio.fail_after(self._timeout):
                async with client.stream("POST", self._url, content=body, headers=headers, timeout=self._timeout,
                                         follow_redirects=False) as response:
                    read = 0
                    async for chunk in response.aiter_bytes():
                        read += len(chunk)
                        if read >= BODY_LIMIT:
                            break
        except httpx.HTTPError as exc:
            return Attempt(ok=False, latency_ms=_ms(began), error=self._failure(exc))
        except TimeoutError:
            error = f"timeout (no complete response in {self._timeout:g}s)"
            return Attempt(ok=False, latency_ms=_ms(began), error=error)
        return self._judge(response, _ms(began))

    def _failure(self, exc: httpx.HTTPError) -> str:
        for kind, text in _FAILURES:
            if isinstance(exc, kind):
                return text if text.endswith(")") else text + describe(exc, self._secrets)
        return f"{type(exc).__name__}: {describe(exc, self._secrets)}"

    @staticmethod
    def _judge(response: httpx.Response, latency_ms: float) -> Attempt:
        code = response.status_code
        if 200 <= code < 300:
            return Attempt(ok=True, code=code, latency_ms=latency_ms)
        if 300 <= code < 400:
            return Attempt(ok=False, code=code, latency_ms=latency_ms, permanent=True,
                           error=f"HTTP {code}: redirect not followed (set the final URL in FLUXHOOK_FORWARD_URL)")
        if code == 410:
            return Attempt(ok=False, code=code, latency_ms=latency_ms, gone=True, error="HTTP 410 Gone")
        if code in RETRYABLE or code >= 500:
            return Attempt(ok=False, code=code, latency_ms=latency_ms, error=f"HTTP {code}",
                           retry_after=parse_retry_after(response.headers.get("retry-after")))
        if 400 <= code < 500:
            return Attempt(ok=False, code=code, latency_ms=latency_ms, permanent=True, error=f"HTTP {code}")
        return Attempt(ok=False, code=code, latency_ms=latency_ms, error=f"HTTP {code}")


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000.0


def webhook_sinks(integrations: Integrations, http: httpx.AsyncClient | None = None) -> Iterator[WebhookSink]:
    """One sink per forward URL, all sharing one HTTP client (`http` if given, else one they own)."""
    if not integrations.forward_urls:
        return
    assert integrations.forward_secret is not None  # Integrations.from_env requires it with forward URLs
    shared = _SharedClient(http, integrations.forward_timeout)
    for url in integrations.forward_urls:
        yield WebhookSink(url, integrations.forward_secret, integrations.forward_events,
                          integrations.forward_timeout, shared)

"""The HTTP server every way fluxhook serves: uvicorn, with limits on what one client may hold.

uvicorn's httptools protocol reads a request line and headers of any size, waits for them for ever,
and accepts connections until the process runs out of file descriptors. `GuardedHttpToolsProtocol`
is that protocol plus, per connection:

- a cap on the request line plus headers (`max_header_bytes`): the bytes are counted before they
  reach the parser, which is never given more than the cap; beyond it, 431 and close;
- a deadline for them (`header_timeout`), counted from when the connection opens or the first bytes
  of a new request arrive: a head not complete by then gets 408 and close (a connection that never
  sent a byte is just closed);
- a cap on open connections (`max_connections`): the one over it is answered 503 with Retry-After
  as soon as it is accepted, and closed, never read.
- a reserve for callbacks (`hooks_reserved`): every request reaches the app through one `HookReserve`
  per server (receiver/serve/capacity.py), which lets at most `max_connections - hooks_reserved`
  requests other than `/hooks/...` (and the health probes) be answered at once and refuses one more
  with 503: event streams and long-polls never take the last connections from provider callbacks.

Idle keep-alive connections are closed by uvicorn's own `timeout_keep_alive` (`idle_timeout`).
uvicorn's `limit_concurrency` is not used: it answers 503 only once a request's headers are
complete, so half-open connections still hold their descriptors, and it counts them against
legitimate requests. A slow body is the app's to refuse (`body_timeout`, receiver/web/callbacks.py).

`uvicorn_config` serves with these limits from Settings (`fluxhook serve` runs it through
receiver/serve/lifecycle.py), and believes X-Forwarded-For and X-Forwarded-Proto only from the peers in
`forwarded_allow_ips` (FLUXHOOK_FORWARDED_ALLOW_IPS; none by default). Under uvicorn's own command line,
`--http receiver.serve.server:GuardedHttpToolsProtocol` takes the limits from the FLUXHOOK_* environment;
forwarded headers there are uvicorn's `--proxy-headers` and `--forwarded-allow-ips` (whose default trusts
loopback).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver.config.settings import Settings
from receiver.obs.logs import LogLimiter
from receiver.serve.capacity import (
    FD_RESERVE,
    RETRY_AFTER,
    HookReserve,
    connection_cap,
    hooks_reserved,
    raise_open_file_limit,
)

__all__ = [
    "FD_RESERVE",
    "GuardedHttpToolsProtocol",
    "HookReserve",
    "Limits",
    "connection_cap",
    "raise_open_file_limit",
    "refusal_log",
    "uvicorn_config",
]

log = logging.getLogger("fluxhook.server")

#: Under attack each kind of refusal is logged at most once per this many seconds.
WARN_EVERY = 10.0


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    header_timeout: float
    max_connections: int
    idle_timeout: float
    #: Of `max_connections`, how many only callbacks may use (receiver/serve/capacity.py).
    hooks_reserved: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """`settings`' limits, the connection cap fitted under the open-file limit (raised first)."""
        cap = connection_cap(settings, raise_open_file_limit())
        return cls(settings.max_header_bytes, settings.header_timeout, cap, settings.idle_timeout,
                   hooks_reserved(settings, cap))

    def reserve(self, refusals: LogLimiter) -> HookReserve:
        """One per server, shared by its connections: what is in flight other than callbacks."""
        return HookReserve(self.max_connections - self.hooks_reserved, refusals)


def refusal_log() -> LogLimiter:
    """One per server, shared by its connections: under attack each kind of refusal is logged once per
    WARN_EVERY seconds, then how many more there were."""
    return LogLimiter(log, time.monotonic, limit=1, window=WARN_EVERY)


@functools.cache
def guard_from_env() -> tuple[Limits, LogLimiter, HookReserve]:
    """For a protocol built by uvicorn's own command line (`--http receiver.serve.server:GuardedHttpToolsProtocol`),
    which passes nothing of ours: the limits read once from the FLUXHOOK_* environment, and one refusal log
    and hooks' reserve for the process. `uvicorn_config` passes them explicitly instead."""
    limits, refusals = Limits.from_settings(Settings.from_env()), refusal_log()
    return limits, refusals, limits.reserve(refusals)


def _canned(status: int, reason: str, *headers: str) -> bytes:
    """A whole response that closes the connection, written without the app."""
    body = reason.encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}", "connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


OVER_CAPACITY = _canned(503, "Service Unavailable", f"retry-after: {RETRY_AFTER}")
HEADERS_TOO_LARGE = _canned(431, "Request Header Fields Too Large")
HEADERS_TOO_SLOW = _canned(408, "Request Timeout")

class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header cap, a header deadline and a connection cap."""

    def __init__(self, *args: Any, limits: Limits | None = None, refusals: LogLimiter | None = None,
                 reserve: HookReserve | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if limits is None or refusals is None or reserve is None:
            env_limits, env_refusals, env_reserve = guard_from_env()
            limits, refusals, reserve = limits or env_limits, refusals or env_refusals, reserve or env_reserve
        self.limits = limits
        self.refusals = refusals
        # Every request reaches the app through the reserve: the path is known there (capacity.py).
        self.app = reserve.around(self.app)
        # uvicorn annotates this int; it only passes it to loop.call_later, which takes seconds as a float.
        self.timeout_keep_alive = self.limits.idle_timeout  # type: ignore[assignment]
        #: Bytes of the request line and headers so far; None from the end of a request's headers to
        #: the end of its body.
        self.head_bytes: int | None = 0
        #: Requests whose headers were completed: tells a head finished in a chunk from one still open.
        self.heads_done = 0
        #: When the head being read began (loop time); None when none is: its deadline is this plus
        #: header_timeout. One timer per connection checks it, re-armed lazily, not one per request.
        self.head_started: float | None = None
        self.header_deadline: asyncio.TimerHandle | None = None

    # asyncio.Protocol declares a BaseTransport; uvicorn's own override (and so this one) takes a Transport.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)
            self.refusals.log(logging.WARNING, "connections",
                              "%d connections open: answered 503 to one more and closed it",
                              self.limits.max_connections)
            transport.write(OVER_CAPACITY)
            transport.close()
            return
        self._head_begins()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cap = self.limits.max_header_bytes
        while True:
            if self.head_bytes is None:
                # Headers complete: body, or requests pipelined after it. A head that begins inside
                # this chunk is counted from the next chunk on: at most one read over the cap.
                super().data_received(data)
                return
            if self.head_started is None:
                self._head_begins()  # the first bytes after a response
            room = cap - self.head_bytes
            if len(data) <= room:
                self.head_bytes += len(data)
                super().data_received(data)
                return
            # More than the head may still take: give the parser only that much and see.
            done, self.head_bytes = self.heads_done, cap
            if room:
                super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self.heads_done == done:
                self.refusals.log(logging.WARNING, "headers",
                                  "request line and headers over %d bytes: answered 431 and closed", cap)
                self._refuse(HEADERS_TOO_LARGE)
                return
            data = data[room:]

    # Parser callbacks
    def on_message_begin(self) -> None:
        if self.head_started is None:
            self._head_begins()  # a request pipelined inside a chunk
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        self.heads_done += 1
        self.head_started = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.head_bytes = 0
        super().on_message_complete()

    # The header deadline
    def _head_begins(self) -> None:
        self.head_started = self.loop.time()
        if self.header_deadline is None:
            self._arm_header_deadline(self.limits.header_timeout)

    def _arm_header_deadline(self, delay: float) -> None:
        self.header_deadline = self.loop.call_later(delay, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _header_deadline_passed(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing() or self.head_started is None:
            return  # no head open: the next one arms the timer again
        left = self.head_started + self.limits.header_timeout - self.loop.time()
        if left > 0:
            self._arm_header_deadline(left)  # the head open now began after this timer was armed
            return
        if self.flow.read_paused or self._answering():
            # We stopped reading, or still answer an earlier request: let that finish first.
            self._arm_header_deadline(self.limits.header_timeout)
            return
        self.refusals.log(logging.WARNING, "timeout", "request headers not complete within %g s: closed",
                          self.limits.header_timeout)
        if self.head_bytes or self.cycle is not None:
            self._refuse(HEADERS_TOO_SLOW)
        else:
            self.transport.close()  # never sent a byte: nothing to answer

    def _answering(self) -> bool:
        """Whether an earlier request's response is under way or queued (pipelining)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse(self, response: bytes) -> None:
        """Answer `response` unless another response is under way (it would interleave), and close."""
        if not self._answering():
            self.transport.write(response)
        self.transport.close()


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """A uvicorn config serving `app` with `settings`' limits (the guarded httptools protocol);
    `overrides` are further uvicorn.Config arguments (host, port, log_level...)."""
    limits, refusals = Limits.from_settings(settings), refusal_log()
    options: dict[str, Any] = {
        "http": functools.partial(GuardedHttpToolsProtocol, limits=limits, refusals=refusals,
                                  reserve=limits.reserve(refusals)),
        "timeout_keep_alive": limits.idle_timeout,
        "ws": "none",  # the receiver has no WebSocket routes
        "access_log": False,
        # X-Forwarded-For / X-Forwarded-Proto are believed only from FLUXHOOK_FORWARDED_ALLOW_IPS.
        # uvicorn's own default trusts loopback (or its FORWARDED_ALLOW_IPS environment variable):
        # with none configured the middleware is off, so no peer can set the client or scheme.
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": list(settings.forwarded_allow_ips),
        **overrides,
    }
    return uvicorn.Config(app, **options)


"""Caps on what API keys can hold open: `/v1/events` and `/ui/events` streams and `?wait=` long-polls.

Heartbeats keep a stream open for ever, so without a cap one key could hold every connection the server
takes (FLUXHOOK_MAX_CONNECTIONS) and provider callbacks would be refused. One :class:`StreamLimits`
per app (`app.state.streams`) counts them: at most `total` at once (FLUXHOOK_MAX_STREAMS) and
`per_key` for one key (FLUXHOOK_MAX_STREAMS_PER_KEY); one more raises :class:`TooManyStreams`, which
each surface answers 429 with Retry-After. A long-poll holds its slot with :meth:`StreamLimits.hold`
while it waits; a stream takes one with :meth:`StreamLimits.acquire` before its answer and gives it
back when the answer ends, however it ends (:class:`HeldStream`).

A key is named by a plain string (the caller's choice, never the key itself); nothing here logs it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from receiver.config.settings import Settings

__all__ = ["RETRY_AFTER", "HeldStream", "Slot", "StreamLimits", "TooManyStreams", "stream_limits"]

#: Seconds a refused client is asked to wait: streams end when clients leave, at any time.
RETRY_AFTER = 5


class TooManyStreams(Exception):
    """One stream or long-poll more than a cap allows; `retry_after` seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Slot:
    """One open stream or long-poll of `key_id`, counted until :meth:`release` (once, however often called)."""

    def __init__(self, limits: StreamLimits, key_id: str) -> None:
        self.limits = limits
        self.key_id = key_id
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limits.give_back(self.key_id)


class StreamLimits:
    def __init__(self, total: int, per_key: int, retry_after: int = RETRY_AFTER) -> None:
        self.total = total
        self.per_key = per_key
        self.retry_after = retry_after
        #: Open streams and long-polls, in all and by key.
        self.open = 0
        self.by_key: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        caps = settings.capacity
        return cls(caps.max_streams, caps.max_streams_per_key)

    def acquire(self, key_id: str) -> Slot:
        """A slot for `key_id`; TooManyStreams when it or the server holds as many as allowed."""
        if self.by_key[key_id] >= self.per_key:
            raise TooManyStreams(f"this API key has {self.per_key} event streams or long-polls open, the most"
                                 " allowed (FLUXHOOK_MAX_STREAMS_PER_KEY): close one or retry later",
                                 self.retry_after)
        if self.open >= self.total:
            raise TooManyStreams(f"{self.total} event streams or long-polls are open, the most allowed"
                                 " (FLUXHOOK_MAX_STREAMS): retry later", self.retry_after)
        self.open += 1
        self.by_key[key_id] += 1
        return Slot(self, key_id)

    def give_back(self, key_id: str) -> None:
        self.open -= 1
        self.by_key[key_id] -= 1
        if self.by_key[key_id] <= 0:
            del self.by_key[key_id]

    @contextlib.asynccontextmanager
    async def hold(self, key_id: str) -> AsyncIterator[None]:
        """Hold a slot for `key_id` for the block (TooManyStreams on entry if none is free)."""
        slot = self.acquire(key_id)
        try:
            yield
        finally:
            slot.release()


def stream_limits(request: Request) -> StreamLimits:
    """The app's limits (receiver/web/app.py sets them)."""
    limits: StreamLimits = request.app.state.streams
    return limits


class HeldStream(StreamingResponse):
    """A streaming answer that gives `slot` back when it ends: finished, the client gone, an error,
    or cancelled (the server shutting down)."""

    def __init__(self, slot: Slot, content: Any, **kwargs: Any) -> None:
        self.slot = slot
        try:
            super().__init__(content, **kwargs)
        except BaseException:
            slot.release()
            raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()

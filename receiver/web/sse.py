"""Server-sent events as the /v1 API (`GET /v1/events`) and the /ui gallery (`/ui/events`) both send them.

A stream opens with a `retry:` line, then sends each outbox event as `id: <seq>`, `event: <type>`,
`data: <one line of JSON>`, and a `: heartbeat` comment whenever the feed yields None (no event for
a while), so proxies keep the connection and clients notice a dead one. What `data` holds is each
surface's own (the API: the event's envelope; the gallery: the new images).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from receiver.store import OutboxEvent, StoreUnavailable

__all__ = ["HEADERS", "RETRY_MS", "format_event", "frames"]

RETRY_MS = 2000
#: Response headers of a stream: not cached, not buffered by a proxy (nginx).
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def format_event(seq: int, type_: str, data: bytes) -> str:
    """One SSE frame. `data` is compact JSON, which has no raw newline, so it is one `data:` line."""
    assert b"\n" not in data and b"\r" not in data
    return f"id: {seq}\nevent: {type_}\ndata: {data.decode()}\n\n"


async def frames(events: AsyncIterator[OutboxEvent | None], data: Callable[[OutboxEvent], Awaitable[bytes]],
                 log: logging.Logger, name: str) -> AsyncIterator[str]:
    """The frames of `events` (a feed's stream, None for a heartbeat), each event's `data` as given.

    An unavailable store ends the stream (the answer has started: the client reconnects with
    Last-Event-ID), logged on `log` as `name` ended; `events` is closed however the stream ends."""
    yield f"retry: {RETRY_MS}\n\n"
    try:
        async for event in events:
            if event is None:
                yield ": heartbeat\n\n"
            else:
                yield format_event(event.seq, event.type, await data(event))
    except StoreUnavailable as exc:
        log.warning("%s ended, store unavailable: %s", name, exc)
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()

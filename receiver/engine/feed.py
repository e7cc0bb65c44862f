"""The outbox as a live feed inside one process: SSE clients, long-polls and the relay wait on it.

One task per process follows the outbox by position (`events_after(head)`) and keeps the newest
events in memory; every subscriber reads from there, or from the database when it resumes from
further back, so a thousand SSE clients cost one query per wake-up, not a thousand.

It wakes when this process changed a job (the store's change listeners call :meth:`poke`) and
otherwise every `interval` seconds: an event committed by another replica reaches this one's
subscribers within that interval. Events commit in `seq` order (see
:func:`receiver.store.sql.emit`), so following by position misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator

from receiver.store import OutboxEvent, Store, StoreUnavailable

__all__ = ["EventFeed"]

log = logging.getLogger("fluxhook.feed")

PAGE = 500


class EventFeed:
    def __init__(self, store: Store, *, interval: float = 0.25, keep: int = 4096) -> None:
        self.store = store
        self.interval = interval
        self._recent: deque[OutboxEvent] = deque(maxlen=keep)
        #: Every event with floor < seq <= head is in `_recent`.
        self._floor = 0
        self._head: int | None = None
        self._poked = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Something changed here: look at the outbox now."""
        self._poked.set()

    async def head(self) -> int:
        """The newest committed event's position (from the database, not the feed's memory)."""
        return await self.store.last_seq()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(), name="fluxhook-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # our own cancellation still propagates
            self._task = None

    def mark(self) -> asyncio.Event:
        """A mark to pass to :meth:`changed` later: it reports events seen since this call, even
        if they came while the caller was busy."""
        self.start()
        return self._changed

    async def changed(self, within: float, since: asyncio.Event | None = None) -> bool:
        """Wait until the feed saw new events (since `since`, a :meth:`mark`, else from now) (True)
        or `within` seconds passed (False)."""
        self.start()
        try:
            async with asyncio.timeout(within):
                await (since or self._changed).wait()
            return True
        except TimeoutError:
            return False

    async def _follow(self) -> None:
        while True:
            try:
                await self._catch_up()
            except StoreUnavailable as exc:
                log.warning("event feed: %s", exc)
            except Exception:
                log.exception("event feed failed; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._poked.wait()
            self._poked.clear()

    async def _catch_up(self) -> None:
        if self._head is None:
            self._head = self._floor = await self.store.last_seq()
        grew = False
        while True:
            page = await self.store.events_after(self._head, limit=PAGE)
            for event in page:
                if len(self._recent) == self._recent.maxlen:
                    self._floor = self._recent[0].seq
                self._recent.append(event)
                self._head = event.seq
            grew = grew or bool(page)
            if len(page) < PAGE:
                break
        if grew:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def stream(
        self, after: int, *, job_id: str | None = None, types: frozenset[str] | None = None, heartbeat: float = 15.0,
        created_by: str | None = None,
    ) -> AsyncGenerator[OutboxEvent | None, None]:
        """Every event after `after` (of `job_id`, of `types`, of the jobs the API key named `created_by`
        created), in order, forever; None whenever `heartbeat` seconds pass without yielding anything
        (other jobs' events do not count)."""
        self.start()
        cursor = after
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()

        def wanted(event: OutboxEvent) -> bool:
            return ((job_id is None or event.job_id == job_id) and (types is None or event.type in types)
                    and (created_by is None or event.created_by == created_by))

        while True:
            waiting = self._changed  # taken before reading, so no change between the two is missed
            found: list[OutboxEvent] = []
            if self._head is not None and cursor >= self._floor:
                fresh = [e for e in self._recent if e.seq > cursor]
                if fresh:
                    cursor = fresh[-1].seq
                    found = [e for e in fresh if wanted(e)]
                    if not found:
                        continue
            elif self._head is not None or cursor < await self.head():
                # Further back than memory: read from the database until caught up with it. Every
                # event up to `bound` had committed before the read, so a short page covers up to it;
                # the floor may move meanwhile (a slow client): then read the database again.
                bound = self._head
                found = await self.store.events_after(cursor, limit=PAGE, job_id=job_id, types=types,
                                                     created_by=created_by)
                if found:
                    cursor = found[-1].seq
                if len(found) < PAGE and bound is not None:
                    cursor = max(cursor, min(bound, self._floor))
                if not found and bound is not None:
                    continue
            if found:
                for event in found:
                    yield event
                quiet_since = loop.time()
                continue
            try:
                async with asyncio.timeout(max(0.0, quiet_since + heartbeat - loop.time())):
                    await waiting.wait()
            except TimeoutError:
                yield None
                quiet_since = loop.time()

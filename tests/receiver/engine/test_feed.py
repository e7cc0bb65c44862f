"""The in-process event feed: in order, nothing missed when a slow reader falls behind memory,
heartbeats on filtered streams while other jobs are busy. A fake outbox; the feed is driven by pokes."""

from __future__ import annotations

import asyncio

import pytest

from receiver.engine.feed import EventFeed
from receiver.store import OutboxEvent

pytestmark = pytest.mark.anyio


class FakeOutbox:
    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    def add(self, job: str = "j1", kind: str = "job.running") -> None:
        seq = len(self.events) + 1
        self.events.append(OutboxEvent(seq=seq, id=f"evt_{seq}", type=kind, job_id=job, created_at=0.0, data={}))

    async def last_seq(self) -> int:
        await asyncio.sleep(0)
        return self.events[-1].seq if self.events else 0

    async def events_after(self, after: int, *, limit: int = 500, job_id: str | None = None,
                           types: frozenset[str] | None = None, created_by: str | None = None) -> list[OutboxEvent]:
        await asyncio.sleep(0)
        found = [e for e in self.events if e.seq > after and (job_id is None or e.job_id == job_id)
                 and (types is None or e.type in types) and (created_by is None or e.created_by == created_by)]
        return found[:limit]


async def caught_up(feed: EventFeed, outbox: FakeOutbox) -> None:
    """Poke the feed and let it run until it holds the newest event (bounded in steps, not time)."""
    feed.poke()
    for _ in range(10_000):
        if feed._head == (outbox.events[-1].seq if outbox.events else 0):
            return
        await asyncio.sleep(0)
    raise AssertionError("the feed did not catch up")


async def test_a_slow_reader_resuming_from_the_database_misses_nothing() -> None:
    outbox = FakeOutbox()
    feed = EventFeed(outbox, interval=3600, keep=4)  # type: ignore[arg-type]
    feed.start()
    await caught_up(feed, outbox)
    for _ in range(10):
        outbox.add()
    await caught_up(feed, outbox)  # memory holds 7..10
    got: list[int] = []
    stream = feed.stream(0, heartbeat=3600)
    try:
        async for event in stream:
            assert event is not None
            got.append(event.seq)
            if event.seq == 3:  # while this reader dawdles, ten more commit and memory moves past them
                for _ in range(10):
                    outbox.add()
                await caught_up(feed, outbox)  # memory holds 17..20
            if event.seq == 20:
                break
    finally:
        await stream.aclose()
        await feed.close()
    assert got == list(range(1, 21))


async def test_a_filtered_stream_still_beats_while_other_jobs_are_busy() -> None:
    outbox = FakeOutbox()
    feed = EventFeed(outbox, interval=3600)  # type: ignore[arg-type]
    stream = feed.stream(0, job_id="quiet", heartbeat=0.05)
    beats = 0

    async def busy() -> None:
        while True:  # other jobs' events, far more often than the heartbeat, until the test ends
            outbox.add(job="other")
            feed.poke()
            await asyncio.sleep(0.005)

    chatter = asyncio.create_task(busy())
    try:
        # Were other jobs' events to restart the heartbeat's clock, no beat would ever come: the
        # timeout guards against that hang (it is no timing assertion: two beats need 0.1 s).
        async with asyncio.timeout(30):
            async for event in stream:
                assert event is None  # nothing of job "quiet" ever comes
                beats += 1
                if beats == 2:
                    break
    finally:
        await stream.aclose()
        chatter.cancel()
        await asyncio.gather(chatter, return_exceptions=True)
        await feed.close()
    assert beats == 2


async def test_events_of_the_job_arrive_in_order_among_others() -> None:
    outbox = FakeOutbox()
    feed = EventFeed(outbox, interval=3600)  # type: ignore[arg-type]
    feed.start()
    await caught_up(feed, outbox)
    stream = feed.stream(0, job_id="mine", heartbeat=3600)
    for n in range(30):
        outbox.add(job="mine" if n % 3 == 0 else "other", kind="job.running" if n < 27 else "job.stored")
    await caught_up(feed, outbox)
    seen = []
    try:
        async for event in stream:
            assert event is not None and event.job_id == "mine"
            seen.append(event.seq)
            if event.type == "job.stored":
                break
    finally:
        await stream.aclose()
        await feed.close()
    assert seen == [n + 1 for n in range(30) if n % 3 == 0]

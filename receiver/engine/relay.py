"""The relay: every outbox event to every sink that takes it, at least once.

One pass (:meth:`Relay.run_once`) fans each sink's share of new events out into delivery rows,
leases the due ones (replicas never hold the same delivery: the lease is a conditional update,
like jobs'), hands each to its sink and records the attempt. A failed attempt is retried with
exponential backoff and jitter (a `Retry-After` is honoured) until FLUXHOOK_FORWARD_RETRY_FOR
after the event, then the delivery is dead; `410 Gone` disables that sink until re-enabled
(`fluxhook sinks --enable`). Per job and sink, deliveries go in sequence order; a sink that is down
holds back only its own.

`serve` runs :func:`relay_loop` (woken by the event feed); `fluxhook sweep` and `POST /v1/sweep`
run one pass, so a deployment with nothing running between requests delivers all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.config.integrations import Integrations
from receiver.engine.feed import EventFeed
from receiver.sinks import Attempt, Sink, SinkError
from receiver.store import AttemptRecord, Delivery, OutboxEvent, Store, StoreUnavailable
from submitter.backoff import Backoff

__all__ = ["BACKOFF", "BACKOFF_BASE", "BACKOFF_CAP", "Relay", "RelayReport", "next_delay", "relay_loop"]

log = logging.getLogger("fluxhook.relay")

BACKOFF_BASE = 5.0
BACKOFF_CAP = 3600.0
#: Deliveries in flight at once, per sink (one claim's worth: all sent together).
PER_SINK = 32


#: Deliveries: 5 s doubling to an hour, with jitter; a sink's Retry-After is the least wait, up to the same cap.
BACKOFF = Backoff(base=BACKOFF_BASE, cap=BACKOFF_CAP, max_retry_after=BACKOFF_CAP, retry_after_replaces=False)


def next_delay(attempts: int, retry_after: float | None, rand: random.Random | None = None) -> float:
    """Seconds until the next attempt after `attempts` failed ones (:data:`BACKOFF`)."""
    return BACKOFF.delay(attempts - 1, retry_after, rand)


@dataclass
class RelayReport:
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return dict(self.outcomes)


class Relay:
    """The relay of one process: `owner` leases deliveries from `store` at `clock`'s time, under the
    forwarding settings `integrations`; `on_delivery(sink name, outcome)` counts each attempt's outcome."""

    def __init__(
        self, sinks: Sequence[Sink], *, store: Store, owner: str, clock: Callable[[], float],
        integrations: Integrations, on_delivery: Callable[[str, str], None],
        links: Callable[[OutboxEvent], Awaitable[OutboxEvent]] | None = None,
    ) -> None:
        self.store, self.owner, self.clock = store, owner, clock
        #: What each event gets before each attempt (receiver/engine/links.py: the files' links, signed now).
        self.links = links
        self.integrations = integrations
        self.on_delivery = on_delivery
        self.sinks = {sink.name: sink for sink in sinks}
        self._started: set[str] = set()
        self._registered = False
        #: Why a sink could not start, by name (shown by `fluxhook sinks`, logged once per change).
        self.errors: dict[str, str] = {}

    @property
    def lease(self) -> float:
        """Longer than any attempt can take, so a lease never lapses while its attempt runs."""
        return self.integrations.forward_timeout * 2 + 30.0

    def sinks_for(self) -> dict[str, frozenset[str]]:
        return {name: sink.types for name, sink in self.sinks.items()}

    async def register(self) -> None:
        if self._registered:
            return
        for sink in self.sinks.values():
            await self.store.register_sink(sink.name, sink.kind, sink.display, now=self.clock())
        self._registered = True

    async def ready(self, sink: Sink) -> bool:
        """Start `sink` if it is not started; False (the reason in `errors`) if it cannot start."""
        if sink.name in self._started:
            return True
        try:
            await sink.start()
        except SinkError as exc:
            if self.errors.get(sink.name) != str(exc):
                log.error("sink %s cannot start: %s (its deliveries wait)", sink.display, exc)
            self.errors[sink.name] = str(exc)
            return False
        self.errors.pop(sink.name, None)
        self._started.add(sink.name)
        return True

    async def close(self) -> None:
        for name in list(self._started):
            with contextlib.suppress(Exception):
                await self.sinks[name].close()
        self._started.clear()

    async def run_once(self, *, limit: int = PER_SINK, max_batches: int = 50) -> RelayReport:
        """One pass for every sink side by side: fan out what is new, deliver what is due (bounded)."""
        report = RelayReport()
        if self.sinks:
            await self.register()
            await asyncio.gather(*(self.run_sink(sink, report, limit=limit, max_batches=max_batches)
                                   for sink in self.sinks.values()))
        return report

    async def run_sink(self, sink: Sink, report: RelayReport, *, limit: int = PER_SINK, max_batches: int = 50) -> None:
        """Fan out and deliver for one sink: claims of at most `limit` deliveries, all sent at once (so
        none waits behind another while its lease runs), their attempts recorded in one transaction."""
        store = self.store
        while await store.fan_out(sink.name, sink.types, now=self.clock()):
            pass
        if not await self.ready(sink):
            return  # its deliveries wait, untouched, until it starts (and no other sink waits for it)
        for _ in range(max_batches):
            claimed = await store.claim_deliveries(
                self.owner, sink=sink.name, now=self.clock(), lease=self.lease, limit=limit
            )
            if not claimed:
                break
            events = [event for _, event in claimed]
            if self.links is not None:
                events = list(await asyncio.gather(*(self.links(event) for event in events)))
            attempts = await asyncio.gather(*(sink.deliver(event) for event in events))
            records = [self._judge(sink, d, e, a, report) for (d, e), a in zip(claimed, attempts, strict=True)]
            await store.record_attempts(self.owner, records)
            if any(a.gone for a in attempts):
                await store.disable_sink(sink.name, next(a.error for a in attempts if a.gone) or "410 Gone",
                                         now=self.clock())
                log.warning("sink %s answered 410 Gone: disabled until `fluxhook sinks --enable %s`",
                            sink.display, sink.name)
                break
            # Until none is due: a job's next event becomes due as soon as the one before it is delivered.

    def _judge(
        self, sink: Sink, delivery: Delivery, event: OutboxEvent, attempt: Attempt, report: RelayReport
    ) -> AttemptRecord:
        now = self.clock()
        next_at: float | None = None
        if attempt.ok:
            state = "delivered"
        elif attempt.gone:
            state, next_at = "pending", now  # owed once the sink is enabled again
        elif attempt.permanent:
            state = "dead"
        elif now + (delay := next_delay(delivery.attempts + 1, attempt.retry_after)) > (
            delivery.created_at + self.integrations.forward_retry_for
        ):
            state = "dead"
        else:
            state, next_at = "pending", now + delay
        if state == "dead":
            log.warning("delivery of %s (%s) to %s is dead after %d attempt(s): %s", event.id, event.type,
                        sink.display, delivery.attempts + 1, attempt.error)
        report.outcomes[state if state != "pending" else "retrying"] += 1
        self.on_delivery(sink.name, state if state != "pending" else "retrying")
        return AttemptRecord(delivery.id, delivery.seq, now, attempt.code, attempt.latency_ms, attempt.error,
                             state, next_at)


#: Waits until its awaitable completes, shutdown begins, or the seconds pass (:meth:`Runtime.idle`).
Idle = Callable[[Awaitable[Any], float], Awaitable[None]]


async def relay_loop(relay: Relay, interval: float, *, feed: EventFeed, stopping: asyncio.Event, idle: Idle) -> None:
    """Deliver as events appear (`feed` wakes it) and retries when due, until `stopping` is set:
    one loop per sink, so a slow or dead sink holds up none of the others."""
    if not relay.sinks:
        return
    await relay.register()
    await asyncio.gather(*(_sink_loop(relay, sink, interval, feed, stopping, idle) for sink in relay.sinks.values()))


async def _sink_loop(
    relay: Relay, sink: Sink, interval: float, feed: EventFeed, stopping: asyncio.Event, idle: Idle
) -> None:
    while not stopping.is_set():
        since = feed.mark()  # events committed during the pass wake the next one at once
        report = RelayReport()
        try:
            await relay.run_sink(sink, report)
            if report.outcomes:
                log.debug("relay %s: %s", sink.display, report.as_dict())
        except StoreUnavailable as exc:
            log.warning("relay %s: %s", sink.display, exc)
        except Exception:
            log.exception("relay pass to %s failed", sink.display)
        if stopping.is_set():
            break
        await idle(feed.changed(interval, since), interval)

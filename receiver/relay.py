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
from collections.abc import Sequence
from dataclasses import dataclass, field

from .runtime import Runtime
from .sinks import Attempt, Sink, SinkError
from .store import Delivery, OutboxEvent, StoreUnavailable

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "Relay", "RelayReport", "next_delay", "relay_loop"]

log = logging.getLogger("fluxhook.relay")

BACKOFF_BASE = 5.0
BACKOFF_CAP = 3600.0
#: Deliveries in flight at once, per sink.
PER_SINK = 16


def next_delay(attempts: int, retry_after: float | None, rand: random.Random | None = None) -> float:
    """Seconds until the next attempt after `attempts` failed ones: 5 s doubling to an hour,
    with jitter (half to all of it); a sink's Retry-After is honoured, up to the same cap."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(attempts - 1, 0))
    delay = (rand or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, BACKOFF_CAP))
    return delay


@dataclass
class RelayReport:
    outcomes: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return dict(self.outcomes)


class Relay:
    def __init__(self, rt: Runtime, sinks: Sequence[Sink]) -> None:
        self.rt = rt
        self.sinks = {sink.name: sink for sink in sinks}
        self._started: set[str] = set()
        self._registered = False
        #: Why a sink could not start, by name (shown by `fluxhook sinks`, logged once per change).
        self.errors: dict[str, str] = {}
        self._limits = {name: asyncio.Semaphore(PER_SINK) for name in self.sinks}

    @property
    def lease(self) -> float:
        """Longer than any attempt can take, so a lease never lapses while its attempt runs."""
        return self.rt.settings.integrations.forward_timeout * 2 + 30.0

    def sinks_for(self) -> dict[str, frozenset[str]]:
        return {name: sink.types for name, sink in self.sinks.items()}

    async def register(self) -> None:
        if self._registered:
            return
        for sink in self.sinks.values():
            await self.rt.store.register_sink(sink.name, sink.kind, sink.display, now=self.rt.clock())
        self._registered = True

    async def _ready(self, sink: Sink) -> bool:
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

    async def run_once(self, *, limit: int = 500, max_batches: int = 20) -> RelayReport:
        """Fan out what is new, then deliver what is due (bounded)."""
        report = RelayReport()
        if not self.sinks:
            return report
        await self.register()
        ready = {name for name, sink in self.sinks.items() if await self._ready(sink)}
        for name, sink in self.sinks.items():
            while await self.rt.store.fan_out(name, sink.types, now=self.rt.clock()):
                pass
        for _ in range(max_batches):
            claimed = await self.rt.store.claim_deliveries(
                self.rt.owner, now=self.rt.clock(), lease=self.lease, limit=limit
            )
            if not claimed:
                break
            # Until none is due: a job's next event becomes due as soon as the one before it is delivered.
            await asyncio.gather(*(self._deliver(d, e, d.sink in ready, report) for d, e in claimed))
        return report

    async def _deliver(self, delivery: Delivery, event: OutboxEvent, ready: bool, report: RelayReport) -> None:
        sink = self.sinks.get(delivery.sink)
        if sink is None or not ready:
            # Not configured here (another replica's sink), or not started: hand it back untouched.
            await self.rt.store.record_attempt(
                delivery.id, self.rt.owner, at=self.rt.clock(), code=None, latency_ms=0.0,
                error=self.errors.get(delivery.sink, "sink not configured on this instance"),
                state="pending", next_at=self.rt.clock() + next_delay(delivery.attempts + 1, None),
            )
            report.outcomes["waiting"] += 1
            return
        async with self._limits[sink.name]:
            attempt = await sink.deliver(event)
        await self._record(sink, delivery, event, attempt, report)

    async def _record(
        self, sink: Sink, delivery: Delivery, event: OutboxEvent, attempt: Attempt, report: RelayReport
    ) -> None:
        now = self.rt.clock()
        next_at: float | None = None
        if attempt.ok:
            state = "delivered"
        elif attempt.gone:
            state = "pending"
            next_at = now
            await self.rt.store.disable_sink(sink.name, attempt.error or "410 Gone", now=now)
            log.warning("sink %s answered 410 Gone: disabled until `fluxhook sinks --enable %s`",
                        sink.display, sink.name)
        elif attempt.permanent:
            state = "dead"
        elif now + (delay := next_delay(delivery.attempts + 1, attempt.retry_after)) > (
            delivery.created_at + self.rt.settings.integrations.forward_retry_for
        ):
            state = "dead"
        else:
            state, next_at = "pending", now + delay
        if state == "dead":
            log.warning("delivery of %s (%s) to %s is dead after %d attempt(s): %s", event.id, event.type,
                        sink.display, delivery.attempts + 1, attempt.error)
        await self.rt.store.record_attempt(
            delivery.id, self.rt.owner, at=now, code=attempt.code, latency_ms=attempt.latency_ms,
            error=attempt.error, state=state, next_at=next_at,
        )
        report.outcomes[state if state != "pending" else "retrying"] += 1


async def relay_loop(rt: Runtime, relay: Relay, interval: float) -> None:
    """Deliver as events appear (the feed wakes it) and retries when due, until `rt.stopping`."""
    while not rt.stopping.is_set():
        since = rt.feed.mark()  # events committed during the pass wake the next one at once
        try:
            report = await relay.run_once()
            if report.outcomes:
                log.debug("relay: %s", report.as_dict())
        except StoreUnavailable as exc:
            log.warning("relay: %s", exc)
        except Exception:
            log.exception("relay pass failed")
        if rt.stopping.is_set():
            break
        await rt.feed.changed(interval, since)

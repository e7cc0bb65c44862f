"""Retry timing, in one place: the backoff policy and the `Retry-After` parser.

:class:`Backoff` is the one formula every waiting loop uses (provider requests, the /v1 client and
its event stream, the relay's deliveries, the receiver's poll and retry schedule): attempt `n`
(0-based) waits up to ``base * factor**n``, never more than `cap`; with `jitter` the wait is drawn
from the upper half of that ("equal jitter": never less than half, so a burst still spreads out and
no retry comes at once). A server's `Retry-After` either *replaces* the computed wait or is the
*least* wait, as the caller's protocol says, and is honoured up to `max_retry_after` so a hostile
or buggy header cannot park work for hours. Pass `rand` (a seeded :class:`random.Random`) or set
``jitter=False`` for repeatable delays in tests.

:func:`parse_retry_after` reads both forms RFC 9110 allows (delta-seconds and an HTTP-date, which
is always GMT), returns seconds from `now`, and caps them at `cap`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["RETRY_AFTER_CAP", "Backoff", "RetryPolicy", "parse_retry_after"]

#: The longest Retry-After any caller honours (seconds); a server asking for more gets this.
RETRY_AFTER_CAP = 3600.0


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with optional equal jitter (see the module docstring)."""

    base: float
    cap: float
    factor: float = 2.0
    jitter: bool = True
    #: The longest Retry-After honoured.
    max_retry_after: float = RETRY_AFTER_CAP
    #: True: a Retry-After is the wait (0 means now); False: it is the least wait, the backoff may be longer.
    retry_after_replaces: bool = True

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number `attempt` + 1: ``base * factor**attempt``, at most `cap`."""
        try:
            grown = self.base * self.factor ** max(attempt, 0)
        except OverflowError:  # so many attempts that the exponential left the float range: long past the cap
            return self.cap
        return min(self.cap, grown)

    def delay(self, attempt: int, retry_after: float | None = None, rand: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based), honouring a server's `retry_after`."""
        if retry_after is not None and self.retry_after_replaces:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = self.ceiling(attempt)
        delay = (rand or random).uniform(ceiling / 2, ceiling) if self.jitter else ceiling
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


@dataclass(frozen=True, kw_only=True)
class RetryPolicy(Backoff):
    """How often and how long to retry one request: `attempts` tries in all, with :class:`Backoff`
    between them (by default 0.5 s doubling to 30 s, jittered; a Retry-After replaces the wait, up
    to 60 s)."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 60.0


def parse_retry_after(value: str | None, now: float | None = None, *, cap: float = RETRY_AFTER_CAP) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), within [0, `cap`].

    `now` is the Unix time a date is measured from (default: the wall clock). An HTTP-date is GMT
    by definition, so one whose zone is missing or `-0000` is read as UTC, never as local time.
    Anything else (a negative or fractional number, junk) is None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), cap)

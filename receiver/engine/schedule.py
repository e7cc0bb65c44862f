"""When to look at a job next: pure functions over settings and counts."""

from __future__ import annotations

from receiver.config.settings import Settings

__all__ = ["SLOT_WAIT", "first_check", "next_poll", "retry_later"]

#: How long a job waits for a free provider slot before trying again.
SLOT_WAIT = 5.0
#: A `Task not found` this long after submit is believed; earlier it may be replication lag.
NOT_FOUND_GRACE = 600.0


def first_check(now: float, deadline: float, settings: Settings) -> float:
    """After submit (or a progress callback): the first poll, if no callback comes first."""
    return min(now + settings.poll_after, deadline)


def next_poll(polls_done: int, now: float, deadline: float, settings: Settings) -> float:
    """Backoff between polls: `poll_min_interval` doubling up to `poll_max_interval`."""
    interval = min(settings.poll_min_interval * 2 ** min(polls_done, 16), settings.poll_max_interval)
    return min(now + interval, deadline)


def retry_later(attempt: int, now: float, *, base: float = 2.0, cap: float = 60.0) -> float:
    """Download retries and deferred submits: exponential, capped."""
    return now + min(base * 2 ** min(attempt, 16), cap)

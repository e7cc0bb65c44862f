"""When to look at a job next: pure functions over settings and counts."""

from __future__ import annotations

from receiver.config.settings import Settings
from submitter.backoff import Backoff

__all__ = ["RETRY_LATER", "SLOT_WAIT", "first_check", "next_poll", "retry_later"]

#: How long a job waits for a free provider slot before trying again.
SLOT_WAIT = 5.0
#: A `Task not found` this long after submit is believed; earlier it may be replication lag.
NOT_FOUND_GRACE = 600.0
#: Download retries and deferred submits: 2 s doubling to a minute, no jitter (a sweep's tick spreads them).
#: Download retries and deferred submits; a provider's Retry-After is honoured up to a minute, as a
#: submit's own retries honour it (RetryPolicy).
RETRY_LATER = Backoff(base=2.0, cap=60.0, jitter=False, max_retry_after=60.0)


def first_check(now: float, deadline: float, settings: Settings) -> float:
    """After submit (or a progress callback): the first poll, if no callback comes first."""
    return min(now + settings.poll_after, deadline)


def next_poll(polls_done: int, now: float, deadline: float, settings: Settings) -> float:
    """Backoff between polls: `poll_min_interval` doubling up to `poll_max_interval`, no jitter."""
    polls = Backoff(base=settings.poll_min_interval, cap=settings.poll_max_interval, jitter=False)
    return min(now + polls.delay(polls_done), deadline)


def retry_later(attempt: int, now: float, retry_after: float | None = None) -> float:
    """When to try again after `attempt` failures (download retries and deferred submits): the
    provider's `retry_after` if it sent one (at most a minute), else the backoff."""
    return now + RETRY_LATER.delay(attempt, retry_after)

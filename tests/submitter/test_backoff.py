"""The one backoff policy and the one Retry-After parser (submitter/backoff.py)."""

from __future__ import annotations

import email.utils
import random

import pytest

from submitter.backoff import RETRY_AFTER_CAP, Backoff, RetryPolicy, parse_retry_after

NOW = 1_800_000_000.0


def test_without_jitter_the_delays_double_to_the_cap() -> None:
    policy = Backoff(base=2.0, cap=60.0, jitter=False)
    assert [policy.delay(n) for n in range(7)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert Backoff(base=1.0, cap=100.0, factor=3.0, jitter=False).delay(3) == 27.0


def test_jitter_is_the_upper_half_and_repeatable_with_a_seeded_rand() -> None:
    policy = Backoff(base=1.0, cap=8.0)
    for attempt in range(10):
        ceiling = min(8.0, 2.0**attempt)
        assert ceiling / 2 <= policy.delay(attempt) <= ceiling
    assert policy.delay(3, rand=random.Random(7)) == policy.delay(3, rand=random.Random(7))


def test_a_huge_attempt_number_waits_the_cap_instead_of_overflowing() -> None:
    assert Backoff(base=0.5, cap=30.0, jitter=False).delay(10**6) == 30.0
    assert Backoff(base=0.5, cap=30.0, jitter=False).delay(-3) == 0.5


def test_retry_after_replaces_or_is_the_least_wait_and_is_capped() -> None:
    replaces = Backoff(base=5.0, cap=3600.0, jitter=False, max_retry_after=60.0)
    assert replaces.delay(4, 0.0) == 0.0  # "now" means now
    assert replaces.delay(0, 10**9) == 60.0
    floor = Backoff(base=5.0, cap=3600.0, jitter=False, retry_after_replaces=False)
    assert floor.delay(0, 0.0) == 5.0 and floor.delay(0, 120.0) == 120.0 and floor.delay(0, 10**9) == 3600.0


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base, policy.cap, policy.max_retry_after) == (5, 0.5, 30.0, 60.0)
    assert RetryPolicy(attempts=4).jitter and RetryPolicy(attempts=4).retry_after_replaces


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), (" 30 ", 30.0), ("99999999", RETRY_AFTER_CAP), ("soon", None), ("", None), (None, None),
     ("-5", None), ("1.5", None), ("Mon, 99 Foo 2026", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_dates_are_gmt_whatever_the_local_zone() -> None:
    assert parse_retry_after(email.utils.formatdate(NOW + 90, usegmt=True), NOW) == 90.0
    assert parse_retry_after(email.utils.formatdate(NOW - 30, usegmt=True), NOW) == 0.0
    # formatdate() without usegmt writes "-0000", which parses without a zone: still GMT, never local time.
    assert parse_retry_after(email.utils.formatdate(NOW + 90), NOW) == 90.0
    assert parse_retry_after(email.utils.formatdate(NOW + 10**6, usegmt=True), NOW) == RETRY_AFTER_CAP
    assert parse_retry_after(email.utils.formatdate(NOW + 10**6, usegmt=True), NOW, cap=60.0) == 60.0


def test_parse_retry_after_measures_from_the_wall_clock_by_default() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0

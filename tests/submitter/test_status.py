from __future__ import annotations

import itertools

import pytest

from submitter.status import ACTIVE, TERMINAL, Status, can_follow, predecessors

PROGRESS = [Status.QUEUED, Status.SUBMITTED, Status.RUNNING, Status.SUCCEEDED, Status.STORED]


class IllegalTransition(Exception):
    """A status change the state machine forbids."""


def advance(current: Status, observed: Status) -> Status:
    """The status after observing `observed`, or raise :class:`IllegalTransition` (the state machine
    applied one report at a time, as the store's conditional updates do)."""
    if not can_follow(current, observed):
        raise IllegalTransition(f"{current} -> {observed}")
    return observed


def apply_all(events: list[Status], start: Status = Status.QUEUED) -> Status:
    status = start
    for observed in events:
        try:
            status = advance(status, observed)
        except IllegalTransition:
            pass
    return status


def test_terminal_is_final() -> None:
    for current, new in itertools.product(TERMINAL, Status):
        assert not can_follow(current, new)
        with pytest.raises(IllegalTransition):
            advance(current, new)


@pytest.mark.parametrize(("early", "late"), list(itertools.combinations(PROGRESS, 2)))
def test_every_out_of_order_pair_keeps_the_later_status(early: Status, late: Status) -> None:
    """Seeing `late` then a stale `early` ends in `late`; seeing them in order ends in `late` too."""
    if late == Status.STORED:
        in_order = apply_all([Status.SUCCEEDED, Status.STORED])
        assert in_order == Status.STORED
        assert apply_all([early], Status.STORED) == Status.STORED
        return
    assert apply_all([early, late]) == late
    assert apply_all([late, early]) == late


def test_failures_end_anything_not_final_but_not_a_delivered_result_by_moderation() -> None:
    for current in (Status.QUEUED, Status.SUBMITTED, Status.RUNNING):
        for end in (Status.FAILED, Status.MODERATED, Status.EXPIRED, Status.CANCELED):
            assert can_follow(current, end)
    assert can_follow(Status.SUCCEEDED, Status.FAILED)
    assert can_follow(Status.SUCCEEDED, Status.EXPIRED)
    assert not can_follow(Status.SUCCEEDED, Status.MODERATED)
    assert not can_follow(Status.SUCCEEDED, Status.RUNNING)


def test_only_succeeded_leads_to_stored() -> None:
    assert predecessors(Status.STORED) == {Status.SUCCEEDED}
    assert predecessors(Status.QUEUED) == frozenset()


def test_skipping_forward_is_allowed() -> None:
    """A Ready callback can race the submit answer: queued -> succeeded."""
    assert advance(Status.QUEUED, Status.SUCCEEDED) == Status.SUCCEEDED


@pytest.mark.parametrize("order", list(itertools.permutations([Status.SUBMITTED, Status.RUNNING, Status.SUCCEEDED])))
def test_all_orders_of_the_happy_path_converge(order: tuple[Status, ...]) -> None:
    assert apply_all(list(order)) == Status.SUCCEEDED


def test_predecessors_agree_with_can_follow() -> None:
    for new in Status:
        for current in Status:
            assert (current in predecessors(new)) == can_follow(current, new)
    assert ACTIVE.isdisjoint(TERMINAL)

"""FLUXHOOK_MAX_STREAMS, FLUXHOOK_MAX_STREAMS_PER_KEY and FLUXHOOK_HOOKS_RESERVED: read, derived from the
connection cap when unset, and refused (naming the variables) when they do not fit under it."""

from __future__ import annotations

import pytest

from receiver.config.capacity import Capacity
from receiver.config.settings import Settings, SettingsError


def test_derived_from_the_connection_cap_when_unset() -> None:
    assert Settings.from_env({}).capacity == Capacity(max_streams=128, max_streams_per_key=16, hooks_reserved=51)
    small = Settings.from_env({"FLUXHOOK_MAX_CONNECTIONS": "20"})
    assert small.capacity == Capacity(max_streams=5, max_streams_per_key=5, hooks_reserved=2)
    # Derived when asked for: a cap changed afterwards (tests) derives them anew.
    assert Settings().with_overrides(max_connections=40).capacity == Capacity(10, 10, 4)


def test_read_from_the_environment() -> None:
    settings = Settings.from_env({"FLUXHOOK_MAX_CONNECTIONS": "100", "FLUXHOOK_MAX_STREAMS": "60",
                                  "FLUXHOOK_MAX_STREAMS_PER_KEY": "4", "FLUXHOOK_HOOKS_RESERVED": "40"})
    assert settings.capacity == Capacity(max_streams=60, max_streams_per_key=4, hooks_reserved=40)


@pytest.mark.parametrize(("env", "named"), [
    ({"FLUXHOOK_MAX_STREAMS": "10", "FLUXHOOK_MAX_STREAMS_PER_KEY": "11"},
     ("FLUXHOOK_MAX_STREAMS_PER_KEY (11)", "FLUXHOOK_MAX_STREAMS (10)")),
    ({"FLUXHOOK_MAX_CONNECTIONS": "100", "FLUXHOOK_MAX_STREAMS": "100"},
     ("FLUXHOOK_MAX_STREAMS (100)", "FLUXHOOK_MAX_CONNECTIONS (100)", "FLUXHOOK_HOOKS_RESERVED (10)")),
    ({"FLUXHOOK_MAX_CONNECTIONS": "100", "FLUXHOOK_MAX_STREAMS": "91"}, ("FLUXHOOK_MAX_STREAMS (91)",)),
    ({"FLUXHOOK_MAX_CONNECTIONS": "100", "FLUXHOOK_HOOKS_RESERVED": "100"},
     ("FLUXHOOK_HOOKS_RESERVED (100)", "FLUXHOOK_MAX_CONNECTIONS (100)")),
    ({"FLUXHOOK_MAX_CONNECTIONS": "1"}, ("FLUXHOOK_HOOKS_RESERVED (1)", "FLUXHOOK_MAX_CONNECTIONS (1)")),
    ({"FLUXHOOK_MAX_STREAMS": "0"}, ("FLUXHOOK_MAX_STREAMS must be at least 1",)),
    ({"FLUXHOOK_MAX_STREAMS_PER_KEY": "x"}, ("FLUXHOOK_MAX_STREAMS_PER_KEY must be a whole number",)),
    ({"FLUXHOOK_HOOKS_RESERVED": "-1"}, ("FLUXHOOK_HOOKS_RESERVED must not be negative",)),
])
def test_values_that_do_not_fit_are_refused_naming_the_variables(env: dict[str, str], named: tuple[str, ...]) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    for text in named:
        assert text in str(info.value)


def test_the_largest_fitting_values_are_accepted() -> None:
    settings = Settings.from_env({"FLUXHOOK_MAX_CONNECTIONS": "100", "FLUXHOOK_HOOKS_RESERVED": "99",
                                  "FLUXHOOK_MAX_STREAMS": "1", "FLUXHOOK_MAX_STREAMS_PER_KEY": "1"})
    assert settings.capacity == Capacity(1, 1, 99)
    settings = Settings.from_env({"FLUXHOOK_MAX_CONNECTIONS": "100", "FLUXHOOK_MAX_STREAMS": "90",
                                  "FLUXHOOK_MAX_STREAMS_PER_KEY": "90"})
    assert settings.capacity == Capacity(90, 90, 10)

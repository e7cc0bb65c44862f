"""What `fluxhook serve` says on a first stop signal (receiver/serve/lifecycle.py); the signals themselves
are tested on a real process in tests/e2e/test_serve_edges.py."""

from __future__ import annotations

import signal
import socket
from collections import Counter
from types import SimpleNamespace

import pytest

from receiver.config.settings import Settings
from receiver.serve.lifecycle import CannotListen, check_listen, stop_notice

SETTINGS = Settings(drain_timeout=20.0, lease_seconds=120.0)


def app_at_work(**kinds: int) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(runtime=SimpleNamespace(at_work=Counter(kinds))))


def test_nothing_in_progress() -> None:
    assert stop_notice(app_at_work(download=0), SETTINGS, 0, signal.SIGINT) == "stopping: nothing in progress"
    assert stop_notice(SimpleNamespace(state=SimpleNamespace()), SETTINGS, 0, signal.SIGTERM).endswith("progress")


def test_work_and_connections_are_counted_and_the_way_out_named() -> None:
    text = stop_notice(app_at_work(download=2, poll=1), SETTINGS, 1, signal.SIGINT)
    assert "waiting for 1 open connection to close, then up to 20 s (FLUXHOOK_DRAIN_TIMEOUT) for 2 downloads " \
           "and 1 poll in progress" in text
    assert "Ctrl-C again stops at once" in text and "(FLUXHOOK_LEASE_SECONDS, 120 s)" in text
    text = stop_notice(app_at_work(submit=1), SETTINGS, 0, signal.SIGTERM)
    assert "for 1 submit in progress" in text and "a second SIGTERM stops at once" in text


def test_a_listening_port_is_in_use_and_a_free_one_is_not() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(CannotListen) as info:
            check_listen("127.0.0.1", port)
        assert info.value.in_use and str(info.value) == f"port {port} is in use"
    check_listen("127.0.0.1", port)  # closed now: free again


def test_an_address_not_on_this_machine_is_named() -> None:
    with pytest.raises(CannotListen) as info:
        check_listen("192.0.2.1", 8000)  # TEST-NET-1: never a local address
    assert not info.value.in_use and "cannot listen on 192.0.2.1 port 8000" in str(info.value)

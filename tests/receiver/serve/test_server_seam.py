"""The one place fluxhook builds on uvicorn beyond its public options: receiver/serve/server.py subclasses
uvicorn's httptools protocol (uvicorn offers no header cap, header deadline or connection cap for it) and
reads attributes uvicorn sets. uvicorn is pinned below its next minor release in pyproject.toml; these tests
fail, naming the attribute, when an upgrade moves one of them, instead of the limits silently lapsing."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from receiver.config.settings import Settings
from receiver.serve.server import WARN_EVERY, GuardedHttpToolsProtocol, Limits, refusal_log, uvicorn_config

pytestmark = pytest.mark.anyio

#: Attributes of a connected HttpToolsProtocol that GuardedHttpToolsProtocol reads or writes.
RELIED_ON = ("app", "connections", "loop", "transport", "flow", "cycle", "pipeline", "timeout_keep_alive")
#: Methods it overrides and calls through super().
OVERRIDDEN = ("connection_made", "connection_lost", "data_received", "on_message_begin", "on_headers_complete",
              "on_message_complete")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _empty_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


async def _connected(max_connections: int = 10) -> tuple[GuardedHttpToolsProtocol, _Transport, ServerState]:
    config = Config(_empty_app, http="httptools", log_config=None)
    state = ServerState()
    limits = Limits(max_header_bytes=1024, header_timeout=5.0, idle_timeout=5.0, max_connections=max_connections,
                    hooks_reserved=1)
    refusals = refusal_log()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={},
                                        _loop=asyncio.get_running_loop(), limits=limits, refusals=refusals,
                                        reserve=limits.reserve(refusals))
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport, state


async def test_every_attribute_the_guarded_protocol_relies_on_is_still_set_by_uvicorn() -> None:
    protocol, transport, state = await _connected()
    missing = [name for name in RELIED_ON if not hasattr(protocol, name)]
    assert not missing, f"uvicorn's HttpToolsProtocol no longer sets {missing}: see receiver/serve/server.py"
    assert protocol.transport is transport and protocol in state.connections
    assert hasattr(protocol.flow, "read_paused"), "uvicorn's FlowControl no longer has read_paused"
    assert protocol.cycle is None and len(protocol.pipeline) == 0
    protocol.connection_lost(None)
    assert protocol not in state.connections


def test_every_method_it_overrides_still_exists_on_uvicorns_protocol() -> None:
    gone = [name for name in OVERRIDDEN if not callable(getattr(HttpToolsProtocol, name, None))]
    assert not gone, f"uvicorn's HttpToolsProtocol no longer has {gone}: see receiver/serve/server.py"


async def test_a_request_completes_its_head_and_an_oversized_one_is_refused() -> None:
    protocol, transport, _ = await _connected()
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert protocol.head_bytes is not None and not transport.closed
    protocol.connection_lost(None)
    protocol, transport, _ = await _connected()
    protocol.data_received(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 2048 + b"\r\n\r\n")
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 431")
    protocol.connection_lost(None)


async def test_the_connection_over_the_cap_is_answered_503_and_closed() -> None:
    first, _, state = await _connected(max_connections=1)
    config = Config(_empty_app, http="httptools", log_config=None)
    second = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={},
                                      _loop=asyncio.get_running_loop(), limits=first.limits,
                                      refusals=first.refusals, reserve=first.limits.reserve(first.refusals))
    transport = _Transport()
    second.connection_made(transport)
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 503")
    assert second not in state.connections and first in state.connections
    first.connection_lost(None)


async def test_requests_other_than_callbacks_cannot_take_the_connections_kept_for_them() -> None:
    """The reserve wraps the app uvicorn's protocol calls (`self.app`): with every connection but the reserved
    ones answering streams, one more such request is refused at once, and a callback and /healthz still reach
    the app."""
    release, entered = asyncio.Event(), []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        entered.append(scope["path"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = Config(app, http="httptools", log_config=None, proxy_headers=False)
    limits = Limits(max_header_bytes=1024, header_timeout=5.0, idle_timeout=5.0, max_connections=5, hooks_reserved=2)
    refusals, state = refusal_log(), ServerState()
    reserve = limits.reserve(refusals)

    async def request(line: str, until: int) -> tuple[GuardedHttpToolsProtocol, _Transport]:
        protocol = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={},
                                            _loop=asyncio.get_running_loop(), limits=limits, refusals=refusals,
                                            reserve=reserve)
        transport = _Transport()
        protocol.connection_made(transport)
        protocol.data_received(f"{line} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        async with asyncio.timeout(5):
            while len(entered) < until and not transport.written:
                await asyncio.sleep(0)
        return protocol, transport

    streams = [await request("GET /v1/events", 1), await request("GET /ui/events?after=3", 2),
               await request("GET /v1/jobs/j1?wait=60", 3)]
    refused, transport = await request("GET /v1/events", 4)
    assert transport.written.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 5\r\n" in transport.written
    assert transport.closed and len(entered) == 3
    refused.connection_lost(None)
    hook = await request("POST /hooks/bfl/fh_1/token", 4)
    probe = await request("GET /healthz", 5)
    assert entered[3:] == ["/hooks/bfl/fh_1/token", "/healthz"] and reserve.busy == 3
    release.set()
    for protocol, transport in [*streams, hook, probe]:
        async with asyncio.timeout(5):
            while b"ok" not in transport.written:
                await asyncio.sleep(0)
        protocol.connection_lost(None)
    assert reserve.busy == 0 and not state.connections


def test_uvicorn_is_pinned_below_its_next_minor_release() -> None:
    pyproject = (Path(__file__).resolve().parents[3] / "pyproject.toml").read_text()
    pin = re.search(r'"uvicorn>=[\d.]+,<(\d+)\.(\d+)"', pyproject)
    assert pin, "pyproject.toml must pin uvicorn below its next minor release (receiver/serve/server.py)"
    major, minor = (int(part) for part in importlib.metadata.version("uvicorn").split(".")[:2])
    assert (major, minor) < (int(pin.group(1)), int(pin.group(2)))


def test_refusals_are_logged_once_per_interval_then_how_many_more(caplog: pytest.LogCaptureFixture) -> None:
    refusals = refusal_log()
    now = [100.0]
    refusals.clock = lambda: now[0]
    with caplog.at_level("WARNING", logger="fluxhook.server"):
        assert refusals.log(logging.WARNING, "headers", "refused %s", "a")
        assert not refusals.log(logging.WARNING, "headers", "refused %s", "b")
        assert not refusals.log(logging.WARNING, "headers", "refused %s", "c")
        assert refusals.log(logging.WARNING, "timeout", "slow")  # each kind has its own interval
        now[0] += WARN_EVERY
        assert refusals.log(logging.WARNING, "headers", "refused %s", "d")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused a", "slow", "suppressed 2 more line(s) like 'headers' in 10 s", "refused d"]


async def test_servers_built_by_uvicorn_config_do_not_share_refusal_counts() -> None:
    settings = Settings.from_env({"FLUXHOOK_SECRET_KEY": "k" * 40, "FLUXHOOK_PUBLIC_URL": "https://hooks.example"})
    one, two = uvicorn_config(_empty_app, settings), uvicorn_config(_empty_app, settings)
    assert one.http.keywords["refusals"] is not two.http.keywords["refusals"]  # type: ignore[union-attr]


def test_the_server_hooks_the_stop_signals_rely_on_still_exist() -> None:
    """receiver/serve/lifecycle.py overrides uvicorn.Server's `handle_exit` and `serve` and reads `should_exit`,
    `started`, `server_state.connections` and `config.app`."""
    from uvicorn import Server

    gone = [name for name in ("handle_exit", "serve", "run") if not callable(getattr(Server, name, None))]
    assert not gone, f"uvicorn.Server no longer has {gone}: see receiver/serve/lifecycle.py"
    server = Server(Config(_empty_app, log_config=None))
    missing = [name for name in ("should_exit", "started", "server_state", "config") if not hasattr(server, name)]
    assert not missing, f"uvicorn.Server no longer sets {missing}: see receiver/serve/lifecycle.py"
    assert isinstance(server.server_state.connections, set) and server.config.app is _empty_app

"""Event streams and long-polls cannot take the connections provider callbacks need: a real uvicorn receiver
on loopback with a small FLUXHOOK_MAX_CONNECTIONS, spoken to over raw sockets.

The stream caps (receiver/web/streams.py) answer 429 beyond FLUXHOOK_MAX_STREAMS_PER_KEY and
FLUXHOOK_MAX_STREAMS; the hooks' reserve (receiver/serve/capacity.py) answers 503 to requests other than
callbacks beyond FLUXHOOK_MAX_CONNECTIONS - FLUXHOOK_HOOKS_RESERVED. Either way a callback still gets 200.
Every wait is for a response, bounded by WAIT; no assertion is about how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.serve.background import bind
from tests import ledger
from tests.e2e.support import WAIT, env_for
from tests.e2e.test_connections import SERVERS, callback, exchange, receiver, response, served

pytestmark = pytest.mark.anyio

KEY_A = "stream-key-a-0123456789"
KEY_B = "stream-key-b-0123456789"
#: Half-open connections and idle keep-alives must not be what closes anything here.
PATIENT = {"header_timeout": WAIT, "idle_timeout": WAIT}

def integrations() -> Integrations:
    return dataclasses.replace(Integrations(), api_keys=parse_api_keys(f"{KEY_A},{KEY_B}"), sse_heartbeat=0.2)


def get(path: str, key: str, *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n{connection}\r\n".encode()


class Streams:
    """Streams asked for on new connections to `port`; those answered 200 stay open until closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open: list[asyncio.StreamWriter] = []

    async def ask(self, key: str, path: str = "/v1/events") -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body): a stream's body is its first frame (`retry:`), read to know it runs;
        a refusal's is the whole answer (its connection is closed)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(get(path, key))
            status, headers, body = await response(reader)
            if status == 200:
                async with asyncio.timeout(WAIT):
                    body = await reader.readuntil(b"\n\n")  # the first chunk's size line, then `retry: 2000`
                self.open.append(writer)
                return status, headers, body
        except BaseException:
            await _close(writer)
            raise
        await _close(writer)
        return status, headers, body

    async def close_one(self) -> None:
        await _close(self.open.pop(0))

    async def __aenter__(self) -> Streams:
        return self

    async def __aexit__(self, *exc: object) -> None:
        while self.open:
            await self.close_one()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def hook_ok(port: int, hook: tuple[str, str], progress: int) -> None:
    answer = await exchange(port, callback(hook, progress, close=True))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


async def test_streams_and_long_polls_over_the_caps_get_429_and_callbacks_still_get_through(tmp_path: Path) -> None:
    # 20 connections: FLUXHOOK_MAX_STREAMS defaults to 5; 3 per key here.
    async with receiver(tmp_path, max_connections=20, max_streams_per_key=3, integrations=integrations(),
                        **PATIENT) as r, Streams(r.port) as streams:
        for _ in range(3):
            assert (await streams.ask(KEY_A))[0] == 200
        status, headers, body = await streams.ask(KEY_A)
        assert status == 429 and headers["retry-after"] == "5" and b'"too_many_streams"' in body
        assert b"FLUXHOOK_MAX_STREAMS_PER_KEY" in body and KEY_A.encode() not in body
        for _ in range(2):
            assert (await streams.ask(KEY_B, "/ui/events"))[0] == 200
        status, headers, body = await streams.ask(KEY_B)  # 5 open: the server's cap
        assert status == 429 and headers["retry-after"] == "5" and b"FLUXHOOK_MAX_STREAMS)" in body
        status, headers, _ = await streams.ask(KEY_B, "/v1/jobs/fh_conn0001?wait=30")
        assert status == 429 and headers["retry-after"] == "5"
        for progress in range(3):
            await hook_ok(r.port, r.hooks[0], progress)
        # Closing a stream gives its slot back (once the server has seen the close).
        await streams.close_one()
        async with asyncio.timeout(WAIT):
            while (await streams.ask(KEY_B))[0] != 200:
                await asyncio.sleep(0.05)
        await hook_ok(r.port, r.hooks[0], 3)
        assert await ledger.count_events(r.rt.store, "fh_conn0000") == 4


async def test_with_every_other_connection_streaming_a_callback_still_gets_200(tmp_path: Path) -> None:
    # 12 connections, 2 kept for callbacks; the stream caps as high as they go, so the reserve alone holds.
    caps = {"max_connections": 12, "hooks_reserved": 2, "max_streams": 10, "max_streams_per_key": 10}
    async with receiver(tmp_path, integrations=integrations(), **caps, **PATIENT) as r, Streams(r.port) as streams:
        answers = []
        for _ in range(caps["max_connections"] + 1):  # until the server refuses a stream
            answers.append(await streams.ask(KEY_A))
            if answers[-1][0] != 200:
                break
        assert [a[0] for a in answers] == [200] * 10 + [503]
        assert answers[-1][1]["retry-after"] == "5" and answers[-1][1]["connection"] == "close"
        # Nothing else but callbacks gets in either: the API ...
        assert (await exchange(r.port, get("/v1/jobs", KEY_B, close=True))).startswith(b"HTTP/1.1 503 ")
        # ... while callbacks, one after another and two at once, and the health probe do.
        for progress in range(3):
            await hook_ok(r.port, r.hooks[0], progress)
        await asyncio.gather(hook_ok(r.port, r.hooks[0], 3), hook_ok(r.port, r.hooks[1], 0))
        assert (await exchange(r.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                ).startswith(b"HTTP/1.1 200 ")
        await streams.close_one()
        async with asyncio.timeout(WAIT):  # once the server has seen the close, the API answers again
            while not (await exchange(r.port, get("/v1/jobs", KEY_B, close=True))).startswith(b"HTTP/1.1 200 "):
                await asyncio.sleep(0.05)
        assert await ledger.count_events(r.rt.store, "fh_conn0000") == 4


@pytest.mark.parametrize("command", list(SERVERS.values()), ids=list(SERVERS))
async def test_the_deployed_commands_take_the_caps_and_the_reserve_from_the_environment(
        tmp_path: Path, command: list[str]) -> None:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    env = env_for(tmp_path, "http://127.0.0.1:9", f"http://127.0.0.1:{port}") | {
        "FLUXHOOK_MAX_CONNECTIONS": "8", "FLUXHOOK_HOOKS_RESERVED": "2", "FLUXHOOK_MAX_STREAMS": "6",
        "FLUXHOOK_MAX_STREAMS_PER_KEY": "3", "FLUXHOOK_API_KEYS": f"{KEY_A},{KEY_B}",
        "FLUXHOOK_SSE_HEARTBEAT": "0.2", "FLUXHOOK_SWEEP_INTERVAL": "3600",
    }
    async with served(command, port, env), Streams(port) as streams:
        assert [(await streams.ask(KEY_A))[0] for _ in range(4)] == [200, 200, 200, 429]
        assert [(await streams.ask(KEY_B))[0] for _ in range(4)] == [200, 200, 200, 503]
        # A callback passes the reserve and reaches the app (which refuses this made-up one's token).
        bogus = b'{"task_id": "t"}'
        answer = await exchange(port, b"POST /hooks/bfl/fh_nope/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(bogus), bogus))
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]

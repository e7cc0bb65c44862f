"""The server's own limits (receiver/serve/server.py), end to end: a real uvicorn receiver on loopback,
spoken to over raw sockets.

Limits are small so the tests are quick. Every wait is for an event (a response, the server's
EOF), bounded generously; no assertion is about how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.engine.jobs import callback_url
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.serve.server import FD_RESERVE, connection_cap, raise_open_file_limit, uvicorn_config
from receiver.store import Job
from receiver.web.app import create_app
from submitter.status import Status
from tests import ledger
from tests.e2e.support import WAIT, env_for
from tests.harness import make_settings

pytestmark = pytest.mark.anyio

CAP = 4096
TIMEOUT = 0.5
#: Waits for a close the server should make after TIMEOUT. Also under uvicorn's own 5 s keep-alive
#: default, so an idle connection closed by that default, not by `idle_timeout`, fails the test.
CLOSE_WITHIN = 8 * TIMEOUT
SMALL = {"max_header_bytes": CAP, "header_timeout": TIMEOUT, "max_connections": 20, "idle_timeout": TIMEOUT}


@dataclass
class Receiver:
    port: int
    rt: Runtime
    hooks: list[tuple[str, str]]  # (hook path, provider task id) of jobs waiting for callbacks

    async def health(self) -> int:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code


@contextlib.asynccontextmanager
async def receiver(tmp_path: Path, jobs: int = 2, **limits: Any) -> AsyncIterator[Receiver]:
    settings = make_settings(tmp_path, **{**SMALL, **limits})
    async with Runtime.open(settings) as rt:
        hooks = []
        now = time.time()
        for i in range(jobs):
            job = Job(id=f"fh_conn{i:04d}", provider="bfl", model="flux-dev", params={}, status=Status.QUEUED,
                      created_at=now, deadline_at=now + 86400)
            await rt.store.create_job(job)
            await rt.store.record_submit(job.id, f"task-{i}", None, now=now, next_check_at=now + 86400)
            assert settings.public_url and settings.secret_key
            url, _ = callback_url(settings.public_url, settings.secret_key, "bfl", job.id)
            hooks.append((url.removeprefix(settings.public_url), f"task-{i}"))
        app = create_app(settings, runtime=rt, workers=False)
        async with serve_in_background(app, settings=settings) as url:
            yield Receiver(int(url.rsplit(":", 1)[1]), rt, hooks)


def callback(hook: tuple[str, str], progress: int, *, pad: int = 0, close: bool = False) -> bytes:
    """A BFL progress callback, as raw HTTP/1.1."""
    path, task = hook
    body = json.dumps({"task_id": task, "status": "processing", "progress": progress, "pad": "x" * pad}).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode() + body


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (by Content-Length)."""
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def until_closed(reader: asyncio.StreamReader, within: float = CLOSE_WITHIN) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if it does not)."""
    async with asyncio.timeout(within):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


async def exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a new connection; everything the server sends until it closes.

    A raw socket: when the server closes with our request unread, the reset that follows its
    answer must not hide the answer (a StreamReader raises the reset before giving buffered data).
    """
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        answer = b""
        async with asyncio.timeout(WAIT):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await loop.sock_sendall(sock, request)  # may be cut short: the answer is still read
            with contextlib.suppress(ConnectionResetError):
                while data := await loop.sock_recv(sock, 65536):
                    answer += data
        return answer


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_headers_over_the_cap_get_431_and_the_rest_is_never_read(tmp_path: Path) -> None:
    total = 8 * 1024 * 1024
    async with receiver(tmp_path) as r:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)  # what we "sent" stays close to what left
        sock.setblocking(False)
        with sock:
            await loop.sock_connect(sock, ("127.0.0.1", r.port))

            async def send_huge_header() -> int:
                sent = 0
                await loop.sock_sendall(sock, f"POST {r.hooks[0][0]} HTTP/1.1\r\nHost: a\r\nX-Big: ".encode())
                chunk = b"a" * 65536
                try:
                    while sent < total:
                        await loop.sock_sendall(sock, chunk)
                        sent += len(chunk)
                except (ConnectionResetError, BrokenPipeError):
                    pass
                return sent

            sender = asyncio.create_task(send_huge_header())
            assert await r.health() == 200  # served meanwhile
            async with asyncio.timeout(WAIT):
                sent = await sender
                answer = b""
                with contextlib.suppress(ConnectionResetError):
                    while data := await loop.sock_recv(sock, 65536):
                        answer += data
        assert sent < total // 4, f"the server read {sent} bytes of a header"
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert b"connection: close" in answer.lower()
        assert await r.health() == 200


async def test_headers_just_under_the_cap_sent_in_pieces_are_served(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r, connection(r.port) as (reader, writer):
        request = callback(r.hooks[0], 1).replace(b"\r\n\r\n", b"\r\nX-Pad: " + b"p" * 3800 + b"\r\n\r\n", 1)
        head_size = request.index(b"\r\n\r\n") + 4
        assert CAP - 200 < head_size <= CAP
        for start in range(0, len(request), 97):
            writer.write(request[start:start + 97])
            await writer.drain()
        status, _, body = await response(reader)
        assert status == 200, body


async def test_a_request_that_stops_mid_headers_is_closed(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r, connection(r.port) as (reader, writer):
        writer.write(f"POST {r.hooks[0][0]} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty".encode())
        await writer.drain()
        answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"\r\nconnection: close\r\n" in answer, answer
        assert await r.health() == 200


async def test_a_request_line_that_never_ends_is_closed(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r, connection(r.port) as (reader, writer):
        writer.write(b"GET /heal")
        await writer.drain()
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r, connection(r.port) as (reader, _):
        assert await until_closed(reader) == b""


async def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r, connection(r.port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, _ = await response(reader)
        assert status == 200 and headers.get("connection") != "close"
        assert await until_closed(reader) == b""


async def test_a_connection_over_the_cap_gets_503_at_once(tmp_path: Path) -> None:
    # Long deadlines here: the half-open connections must still be open when the extra one comes.
    async with receiver(tmp_path, max_connections=20, header_timeout=WAIT, idle_timeout=WAIT) as r:
        async with contextlib.AsyncExitStack() as held:
            half_open = [await held.enter_async_context(connection(r.port)) for _ in range(20)]
            for i, (_, writer) in enumerate(half_open):
                writer.write(callback(r.hooks[0], i, close=True)[:40])  # part of the request line
                await writer.drain()
            answer = await exchange(r.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"\r\nretry-after: 5\r\n" in answer and b"\r\nconnection: close\r\n" in answer
            # The half-open ones were held, not refused: they finish their requests and are served.
            for i, (_, writer) in enumerate(half_open):
                writer.write(callback(r.hooks[0], i, close=True)[40:])
            for reader, _ in half_open:
                assert (await response(reader))[0] == 200
        async with asyncio.timeout(WAIT):  # once the server has let them go
            while await r.health() != 200:
                await asyncio.sleep(0.05)
        assert await ledger.count_events(r.rt.store, "fh_conn0000") == 20


async def test_callbacks_on_one_connection_one_after_another_and_pipelined(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r:
        async with connection(r.port) as (reader, writer):
            await _one_after_another_and_pipelined(r, reader, writer)
        assert await ledger.count_events(r.rt.store, "fh_conn0000") == 3
        assert await ledger.count_events(r.rt.store, "fh_conn0001") == 6


async def _one_after_another_and_pipelined(r: Receiver, reader: asyncio.StreamReader,
                                           writer: asyncio.StreamWriter) -> None:
    """Three callbacks reusing the connection, six pipelined in one write, then a close."""
    for progress in range(3):  # keep-alive reuse
        writer.write(callback(r.hooks[0], progress))
        status, headers, body = await response(reader)
        assert status == 200 and json.loads(body)["ok"] and headers.get("connection") != "close"
    # Pipelined: more heads in one write than the cap, and bodies larger than it.
    batch = [callback(r.hooks[1], n, pad=1500 if n % 2 else 6000) for n in range(6)]
    assert sum(len(b) for b in batch) > 4 * CAP
    writer.write(b"".join(batch))
    for _ in batch:
        status, _, body = await response(reader)
        assert status == 200, body
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await response(reader))[0] == 200
    assert await until_closed(reader, WAIT) == b""


async def test_callbacks_through_an_http_client(tmp_path: Path) -> None:
    async with receiver(tmp_path) as r, httpx.AsyncClient(base_url=f"http://127.0.0.1:{r.port}") as http:
        path, task = r.hooks[0]
        for progress in range(5):
            answer = await http.post(path, json={"task_id": task, "status": "processing", "progress": progress},
                                     headers={"x-trace": "t" * 2000})
            assert answer.status_code == 200, answer.text
        assert await ledger.count_events(r.rt.store, "fh_conn0000") == 5


def test_every_server_gets_the_settings_limits(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **SMALL)
    config = uvicorn_config(object(), settings, port=1234)
    assert config.timeout_keep_alive == TIMEOUT and config.port == 1234 and config.ws == "none"
    limits = config.http.keywords["limits"]  # type: ignore[union-attr]
    assert (limits.max_header_bytes, limits.header_timeout, limits.max_connections, limits.idle_timeout) == (
        CAP, TIMEOUT, 20, TIMEOUT)


def test_the_connection_cap_fits_under_the_open_file_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    soft = raise_open_file_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    settings = make_settings(tmp_path, max_connections=512, download_concurrency=8)
    with caplog.at_level(logging.WARNING, "fluxhook.server"):
        assert connection_cap(settings, 100_000) == 512 and connection_cap(settings, None) == 512
        assert not caplog.records
        assert connection_cap(settings, 1024) == 512
        assert connection_cap(settings, 256) == 256 - FD_RESERVE - 16
    (warning,) = caplog.records
    assert "FLUXHOOK_MAX_CONNECTIONS=512" in warning.getMessage() and "256" in warning.getMessage()


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
SERVERS = {
    "fluxhook serve": ["-m", "receiver.cli", "serve", "--log-level", "warning", "--port"],
    "uvicorn --http receiver.serve.server:GuardedHttpToolsProtocol": [
        "-m", "uvicorn", "--factory", "receiver.web.app:create_app_from_env",
        "--http", "receiver.serve.server:GuardedHttpToolsProtocol", "--log-level", "warning", "--port",
    ],
}


@pytest.mark.parametrize("command", list(SERVERS.values()), ids=list(SERVERS))
async def test_the_deployed_commands_take_the_limits_from_the_environment(tmp_path: Path, command: list[str]) -> None:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    env = env_for(tmp_path, "http://127.0.0.1:9", f"http://127.0.0.1:{port}") | {
        "FLUXHOOK_MAX_HEADER_BYTES": str(CAP), "FLUXHOOK_HEADER_TIMEOUT": str(TIMEOUT),
        "FLUXHOOK_IDLE_TIMEOUT": str(TIMEOUT), "FLUXHOOK_SWEEP_INTERVAL": "3600",
    }
    async with served(command, port, env):
        big = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
        assert (await exchange(port, big)).startswith(b"HTTP/1.1 431 ")
        async with connection(port) as (reader, _):
            assert await until_closed(reader) == b""
        async with connection(port) as (reader, writer):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await response(reader))[0] == 200
            assert await until_closed(reader) == b""


@contextlib.asynccontextmanager
async def served(command: list[str], port: int, env: dict[str, str]) -> AsyncIterator[Any]:
    """`python <command> <port>` with `env`, once it answers /healthz; terminated on the way out."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, str(port), env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(WAIT):  # until it serves
            while True:
                assert process.returncode is None, "the server exited"
                with contextlib.suppress(ConnectionRefusedError):
                    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    if (await exchange(port, health)).startswith(b"HTTP/1.1 200 "):
                        break
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(WAIT):
            await process.wait()

"""Helpers for tests/receiver/sinks/test_sinks.py: a real HTTP endpoint on loopback, events, free ports, service checks."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from receiver.store import OutboxEvent

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"


def event(type: str = "job.stored", **data: Any) -> OutboxEvent:
    job = "fh_" + uuid.uuid4().hex
    return OutboxEvent(seq=7, id="evt_" + uuid.uuid4().hex, type=type, job_id=job, created_at=time.time(),
                       data={"id": job, "status": type.removeprefix("job."), **data})


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    #: Never answer (until the endpoint shuts down): the client times out.
    hang: bool = False


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class Endpoint:
    """A minimal HTTP/1.1 server on 127.0.0.1: records requests, answers with queued replies (default 200)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.replies: deque[Reply] = deque()
        self._release = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Endpoint:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Request(method, target, headers, body))
                reply = self.replies.popleft() if self.replies else Reply()
                if reply.hang:
                    await self._release.wait()
                    return
                out = [f"HTTP/1.1 {reply.status} X", f"content-length: {len(reply.body)}"]
                out += [f"{k}: {v}" for k, v in reply.headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + reply.body)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._writers.discard(writer)
            writer.close()


async def require_redis() -> Any:
    """A redis-py client on the test server; fails (never skips) when Redis does not answer."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"Redis does not answer on 127.0.0.1:6379 ({exc}); tests/receiver/sinks/test_sinks.py needs it (see .ci/run)")
    return client


async def require_nats() -> Any:
    """A nats-py client on the test server with JetStream; fails (never skips) when NATS does not answer."""
    import nats

    async def quiet(exc: Exception) -> None:
        pass

    nc = None
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=5, allow_reconnect=False, max_reconnect_attempts=1,
                                reconnect_time_wait=0.1, error_cb=quiet)
        await nc.jetstream().account_info()
    except Exception as exc:
        if nc is not None:
            await nc.close()
        pytest.fail(f"NATS with JetStream does not answer on 127.0.0.1:4222 ({type(exc).__name__}: {exc});"
                    " tests/receiver/sinks/test_sinks.py needs it (see .ci/run)")
    return nc

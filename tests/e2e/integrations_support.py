"""What tests/e2e/test_integrations.py shares: `fluxhook serve` processes with the /v1 API and the
sinks configured, an SSE client that records what it reads, a webhook endpoint that records what
it is sent, and bounded waits.

Every wait is for a condition, polled with a short sleep until a deadline; nothing is asserted on
elapsed time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._setup import free_port
from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.serve.background import serve_in_background
from submitter.simulator import Faults, Simulator
from tests.e2e.support import WAIT, env_for
from tests.sinks_support import Endpoint, Request

PROJECT = Path(__file__).resolve().parents[2]
API_KEY = "e2e-api-key-0123456789abcdef"
FORWARD_SECRET = "whsec_" + base64.b64encode(b"e2e-forward-secret-0123456789ab").decode()


async def wait_until(check: Callable[[], Awaitable[bool] | bool], within: float, what: str) -> None:
    """Poll `check` every 20 ms until it holds; AssertionError naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


#: The peer (client) port of the connection a handler task serves.
#: (the sender's port, our port) of the connection being handled.
_PEER: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("peer", default=(0, 0))


def socket_owners(port: int, pids: list[int], remote_port: int) -> list[int]:
    """Which of `pids` holds the loopback TCP socket bound to local `port` and connected to `remote_port`
    (from /proc). The remote port counts: Linux gives one ephemeral port to several outgoing connections
    when their destinations differ, so another process's connection to, say, PostgreSQL may share it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.read().splitlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and int(cols[2].rsplit(":", 1)[1], 16) == remote_port:
                    inodes.add(f"socket:[{cols[9]}]")
    owners = []
    for pid in pids:
        with contextlib.suppress(OSError):
            fds = Path(f"/proc/{pid}/fd")
            if any(os.readlink(fd) in inodes for fd in fds.iterdir()):
                owners.append(pid)
    return owners


class _Requests(list[Request]):
    def __init__(self, endpoint: WhoEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def append(self, item: Request) -> None:
        # Called in the connection's handler task, while the sender's socket is open: who sent it.
        sender, ours = _PEER.get()
        self.endpoint.senders.append(socket_owners(sender, self.endpoint.pids(), ours))
        super().append(item)


class WhoEndpoint(Endpoint):
    """tests.sinks_support.Endpoint that also records which serve process sent each request
    (`senders[i]`: the pids, of those `pids()` names, owning the connection of `requests[i]`)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        super().__init__()
        self.pids = pids
        self.senders: list[list[int]] = []
        self.requests = _Requests(self)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ours = writer.get_extra_info("sockname")
        _PEER.set((peer[1] if peer else 0, ours[1] if ours else 0))
        await super()._handle(reader, writer)


@dataclass
class Serve:
    """One `fluxhook serve` subprocess on its own port; stderr goes to a log file."""

    name: str
    port: int
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, *failpoints: str) -> None:
        self.starts += 1
        env = {**os.environ, **self.env, "FLUXHOOK_FAILPOINTS": ",".join(failpoints)}
        with (self.logs / f"{self.name}-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "receiver.cli", "serve", "--port", str(self.port), "--log-level", "warning"],
                cwd=PROJECT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            async def healthy() -> bool:
                assert self.process is not None and self.process.poll() is None, (
                    f"{self.name} exited during start-up:\n{self.log_text()}")
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get(f"{self.url}/healthz")).status_code == 200
                return False

            await wait_until(healthy, WAIT, f"{self.name} to answer /healthz")

    async def died(self) -> int:
        assert self.process is not None
        await wait_until(lambda: self.process is not None and self.process.poll() is not None, WAIT,
                         f"{self.name} to exit")
        return self.process.returncode

    async def stop(self) -> int | None:
        """SIGTERM (drain), SIGKILL if it does not exit in time; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: self.process is not None and self.process.poll() is not None, WAIT,
                                 f"{self.name} to exit")
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{self.name}-*.log")))


@dataclass
class Received:
    """One SSE event as a client read it, and when (wall clock, as the envelope's created_at)."""

    seq: int
    type: str
    envelope: dict[str, Any]
    at: float


@dataclass
class SSEClient:
    """Reads GET /v1/events in a background task, recording every event; `connected` is set once
    the answer's headers are in (the server has fixed its starting position by then)."""

    http: httpx.AsyncClient
    url: str
    last_event_id: int | None = None
    query: str = ""
    events: list[Received] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    status: int | None = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SSEClient:
        self._task = asyncio.create_task(self._read())
        await wait_until(lambda: self.connected.is_set() or (self._task is not None and self._task.done()), WAIT,
                         f"the event stream at {self.url} to answer")
        if self._task.done():
            self._task.result()  # raise what went wrong
        assert self.status == 200, f"GET /v1/events answered {self.status}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _read(self) -> None:
        headers = {"authorization": f"Bearer {API_KEY}", "accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["last-event-id"] = str(self.last_event_id)
        async with self.http.stream("GET", f"{self.url}/v1/events{self.query}", headers=headers,
                                    timeout=httpx.Timeout(10.0, read=None)) as response:
            self.status = response.status_code
            self.connected.set()
            if response.status_code != 200:
                return
            frame: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    frame[name] = value.removeprefix(" ")
                    continue
                if "data" in frame and "id" in frame:
                    self.events.append(Received(int(frame["id"]), frame.get("event", ""),
                                                json.loads(frame["data"]), time.time()))
                frame = {}

    def ids(self) -> list[str]:
        return [e.envelope["id"] for e in self.events]


@dataclass
class Stack:
    """The simulator, a webhook endpoint, and `fluxhook serve` processes sharing one ledger."""

    env: dict[str, str]
    sim: Simulator
    endpoint: WhoEndpoint
    serves: list[Serve]
    rt: Runtime  # a passive view of the same ledger (no sinks, no loops), for checking
    http: httpx.AsyncClient

    async def create(self, serve: Serve, prompt: str, *, key: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {API_KEY}"}
        if key is not None:
            headers["idempotency-key"] = key
        body = {"provider": "bfl", "model": "flux-dev", "params": {"prompt": prompt}}
        return await self.http.post(f"{serve.url}/v1/jobs", json=body, headers=headers)

    async def job(self, serve: Serve, job_id: str, wait: float = 0) -> dict[str, Any]:
        answer = await self.http.get(f"{serve.url}/v1/jobs/{job_id}", params={"wait": str(wait)} if wait else None,
                                     headers={"authorization": f"Bearer {API_KEY}"}, timeout=wait + 10)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def sse(self, serve: Serve, *, last_event_id: int | None = None, query: str = "") -> SSEClient:
        return SSEClient(self.http, serve.url, last_event_id, query)

    def hooks(self) -> list[dict[str, Any]]:
        """Every webhook POST the endpoint got: headers and the parsed envelope."""
        return [{"headers": r.headers, "body": r.body, "envelope": json.loads(r.body)}
                for r in self.endpoint.requests if r.method == "POST"]


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path, *, db: str | None = None, replicas: int = 1, extra: dict[str, str] | None = None,
    faults: Faults = Faults(runtime=0.05), callback_retries: tuple[float, ...] = (0.2, 0.5, 1.0),
) -> AsyncIterator[Stack]:
    """Everything but the serve processes' start (the test starts them, with failpoints if it likes)."""
    sim = Simulator(default_faults=faults, callback_retries=callback_retries)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    async with contextlib.AsyncExitStack() as exit_stack:
        sim_url = await exit_stack.enter_async_context(serve_in_background(sim.app))
        serves: list[Serve] = []
        endpoint = await exit_stack.enter_async_context(
            WhoEndpoint(lambda: [sv.process.pid for sv in serves if sv.process is not None]))
        ports = [free_port() for _ in range(replicas)]
        base = env_for(tmp_path, sim_url, f"http://127.0.0.1:{ports[0]}", db=db) | {
            "FLUXHOOK_LEASE_SECONDS": "2",
            "FLUXHOOK_DRAIN_TIMEOUT": "3",
            "FLUXHOOK_MAX_BODY": "65536",
            "FLUXHOOK_BFL_MAX_ACTIVE": "1000",
        }
        passive = Settings.from_env(base)
        passive.results.mkdir(parents=True, exist_ok=True)
        rt = await exit_stack.enter_async_context(Runtime.open(passive))  # migrates the ledger first
        env = base | {
            "FLUXHOOK_API_KEYS": API_KEY,
            "FLUXHOOK_FORWARD_URL": f"{endpoint.url}/hook",
            "FLUXHOOK_FORWARD_SECRET": FORWARD_SECRET,
            **(extra or {}),
        }
        serves += [
            Serve(f"serve{i}", port, env | {"FLUXHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}"}, logs)
            for i, port in enumerate(ports)
        ]
        http = await exit_stack.enter_async_context(httpx.AsyncClient(timeout=30.0, trust_env=False))
        s = Stack(env, sim, endpoint, serves, rt, http)
        try:
            yield s
        except BaseException as exc:
            exc.add_note("\n".join(f"--- {sv.name} log ---\n{sv.log_text()[-4000:]}" for sv in serves))
            raise
        finally:
            for sv in serves:
                await sv.stop()
            await sim.aclose()

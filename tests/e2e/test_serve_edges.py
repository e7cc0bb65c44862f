"""`fluxhook serve` at the edges, as a real process: a port in use is said before anything starts; the
first Ctrl-C says what the shutdown waits for, and a second one stops at once (nothing is lost: the job's
lease lapses and the next sweep takes it over, as after a crash: tests/e2e/test_crash.py).

Every wait is for an event (a line on stderr, a process exit, a download begun), bounded by WAIT; the
drain timeout and the slow download are both far longer than WAIT, so only the second Ctrl-C can end
the process in time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import serve_in_background
from submitter.simulator import Faults, Simulator
from submitter.status import Status
from tests.e2e.support import WAIT, env_for, run_cli
from tests.sinks_support import free_port

pytestmark = pytest.mark.anyio


class Receiver:
    """`fluxhook serve` in a child process, its stderr read line by line."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env, self.port = env, port
        self.process: asyncio.subprocess.Process | None = None
        self.err: list[str] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "receiver.cli", "serve", "--port", str(self.port), "--log-level", "warning",
            env={**os.environ, **self.env}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        async with httpx.AsyncClient(headers={"connection": "close"}) as http, asyncio.timeout(WAIT):
            while True:
                assert self.process.returncode is None, "receiver exited during start-up"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    async def line(self, containing: str) -> str:
        """The next stderr line containing `containing` (bounded by WAIT)."""
        assert self.process is not None and self.process.stderr is not None
        async with asyncio.timeout(WAIT):
            while True:
                raw = await self.process.stderr.readline()
                assert raw, f"stderr ended before a line with {containing!r}: {self.err}"
                self.err.append(raw.decode())
                if containing in self.err[-1]:
                    return self.err[-1]

    async def exited(self) -> int:
        assert self.process is not None and self.process.stderr is not None
        async with asyncio.timeout(WAIT):
            self.err += (await self.process.stderr.read()).decode().splitlines(keepends=True)
            return await self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


@contextlib.asynccontextmanager
async def receiver(tmp_path: Path, faults: Faults, **extra: str) -> AsyncIterator[tuple[Receiver, Simulator, Runtime]]:
    sim = Simulator(default_faults=faults)
    async with serve_in_background(sim.app) as sim_url:
        port = free_port()
        env = env_for(tmp_path, sim_url, f"http://127.0.0.1:{port}") | extra
        settings = Settings.from_env(env)
        settings.results.mkdir(parents=True)
        async with Runtime.open(settings) as rt:
            r = Receiver(env, port)
            try:
                yield r, sim, rt
            finally:
                r.kill()
                if r.process is not None:
                    await r.process.wait()
        await sim.aclose()


async def test_a_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = env_for(tmp_path, "http://127.0.0.1:9", f"http://127.0.0.1:{port}")
        code, _, err = await run_cli(env, "serve", "--port", str(port))
    assert code == 2, err
    assert f"port {port} is in use (set --port or stop the other process)" in err
    assert "Errno" not in err and "startup complete" not in err
    assert not (tmp_path / "fluxhook.db").exists()  # nothing started: no ledger opened


async def test_an_app_that_cannot_start_exits_1_not_the_wait_timeout_code(tmp_path: Path) -> None:
    port = free_port()
    env = env_for(tmp_path, "http://127.0.0.1:9", f"http://127.0.0.1:{port}") | {
        "FLUXHOOK_DB": str(tmp_path / "no-such-folder" / "fluxhook.db")}
    code, _, err = await run_cli(env, "serve", "--port", str(port), "--log-level", "warning")
    assert code == 1, err  # the store is unavailable (README "Exit codes"); 3 means a wait timed out
    assert "no-such-folder" in err and "fluxhook serve: error: the receiver did not start" in err


async def test_ctrl_c_with_nothing_in_progress_stops_at_once_and_says_so(tmp_path: Path) -> None:
    async with receiver(tmp_path, Faults()) as (r, _, _):
        await r.start()
        assert r.process is not None
        r.process.send_signal(signal.SIGINT)
        notice = await r.line("stopping")
        # Nothing at work (the probe's connection may not have closed yet: then it is the one thing named).
        assert "stopping: nothing in progress" in notice or "waiting for 1 open connection to close." in notice
        assert await r.exited() == 130


async def test_ctrl_c_says_what_it_waits_for_and_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    # A 400 KB result served at 2 KB/s: its download outlives WAIT many times over, as does the drain.
    faults = Faults(runtime=0.1, image_size=400_000, slow_download=2_000)
    async with receiver(tmp_path, faults, FLUXHOOK_DRAIN_TIMEOUT="600") as (r, sim, rt):
        await r.start()
        assert r.process is not None
        job = await submit(rt, "bfl", "flux-dev", {"prompt": "slow to fetch"})
        async with asyncio.timeout(WAIT):
            while not sim.stats()["totals"]["deliveries"]:  # the receiver is downloading it now
                await asyncio.sleep(0.05)
        r.process.send_signal(signal.SIGINT)
        notice = await r.line("stopping")
        assert "up to 600 s (FLUXHOOK_DRAIN_TIMEOUT) for 1 download in progress" in notice
        assert "Ctrl-C again stops at once" in notice and "leases lapse (FLUXHOOK_LEASE_SECONDS" in notice
        assert r.process.returncode is None  # still draining
        r.process.send_signal(signal.SIGINT)
        assert await r.exited() == 130
        assert any("stopping now (SIGINT again)" in line and "nothing is lost" in line for line in r.err), r.err
        # Nothing lost: the job still has its result to fetch, under a lease that lapses (another process
        # then fetches it: tests/e2e/test_crash.py kills a receiver mid-download).
        stalled = await rt.store.get_job(job.id)
        assert stalled is not None and stalled.status == Status.SUCCEEDED
        assert stalled.lease_owner is not None  # the stopped process's lease, left to lapse


"""Crash safety: a real `fluxhook serve` (or `fluxhook submit`) process SIGKILLs itself at each
dangerous point; after a restart every job ends in one terminal state with its files intact.

Waits are for events (a status, a process exit), each bounded; leases are 1 s so a dead
process's work is taken over quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.store import Job
from submitter.simulator import Faults, Simulator
from submitter.status import TERMINAL, Status
from tests import ledger
from tests.e2e.support import WAIT, env_for, run_cli, wait_for_status
from tests.harness import files_in

pytestmark = pytest.mark.anyio


@dataclass
class Crashable:
    env: dict[str, str]
    port: int
    sim: Simulator
    rt: Runtime
    process: subprocess.Popen[bytes] | None = None

    async def start(self, *failpoints: str) -> None:
        env = {**os.environ, **self.env, "FLUXHOOK_FAILPOINTS": ",".join(failpoints)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        async with httpx.AsyncClient() as http, asyncio.timeout(WAIT):
            while True:
                assert self.process.poll() is None, "receiver exited during start-up"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    async def died(self) -> int:
        assert self.process is not None
        async with asyncio.timeout(WAIT):
            while self.process.poll() is None:
                await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def wait(self, job_id: str, until: frozenset[Status] = TERMINAL) -> Job:
        return await wait_for_status(self.rt.store, job_id, until)


@contextlib.asynccontextmanager
async def crashable(tmp_path: Path, faults: Faults) -> AsyncIterator[Crashable]:
    sim = Simulator(default_faults=faults, callback_retries=(0.5, 1.0, 2.0, 4.0))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        port = sock.getsockname()[1]
        sock.close()
        env = env_for(tmp_path, sim_url, f"http://127.0.0.1:{port}")
        env |= {"FLUXHOOK_LEASE_SECONDS": "1", "FLUXHOOK_POLL_AFTER": "0.3", "FLUXHOOK_SWEEP_INTERVAL": "0.2"}
        settings = Settings.from_env(env)
        settings.results.mkdir(parents=True)
        async with Runtime.open(settings) as rt:
            c = Crashable(env, port, sim, rt)
            try:
                yield c
            finally:
                c.stop()
        await sim.aclose()


async def assert_stored_once(c: Crashable, job: Job) -> None:
    assert job.status == Status.STORED, job
    folder = c.rt.settings.results / job.id
    on_disk = sorted(p.name for p in folder.iterdir())
    records = await c.rt.store.files(job.id)
    assert on_disk == sorted(Path(f.path).name for f in records if f.path)  # no partial or extra file
    for f in records:
        assert hashlib.sha256((c.rt.settings.results / f.path).read_bytes()).hexdigest() == f.sha256  # type: ignore[operator]


async def test_submitter_killed_after_the_ledger_row(tmp_path: Path) -> None:
    async with crashable(tmp_path, Faults(runtime=0.1)) as c:
        code, _, _ = await run_cli(c.env | {"FLUXHOOK_FAILPOINTS": "after-ledger"},
                             "submit", "--provider", "bfl", "--model", "flux-dev", "--prompt", "crash")
        assert code == -signal.SIGKILL
        (job,) = await c.rt.store.list_jobs()
        assert job.status == Status.QUEUED and c.sim.stats()["totals"]["submit_requests"] == 0
        await c.start()
        await assert_stored_once(c, await c.wait(job.id))
        assert c.sim.stats()["totals"]["submit_requests"] == 1


async def test_submitter_killed_before_recording_the_providers_answer(tmp_path: Path) -> None:
    async with crashable(tmp_path, Faults(runtime=0.5)) as c:
        await c.start()
        code, _, _ = await run_cli(c.env | {"FLUXHOOK_FAILPOINTS": "before-submit-recorded"},
                             "submit", "--provider", "bfl", "--model", "flux-dev", "--prompt", "crash")
        assert code == -signal.SIGKILL
        (job,) = await c.rt.store.list_jobs()
        assert job.provider_job_id is None  # we never heard the answer...
        done = await c.wait(job.id)  # ...but the provider has the job, and its callback names ours
        await assert_stored_once(c, done)
        assert c.sim.stats()["totals"]["submit_requests"] == 1  # never resubmitted


async def test_receiver_killed_after_committing_a_callback(tmp_path: Path) -> None:
    async with crashable(tmp_path, Faults(runtime=0.1)) as c:
        await c.start("after-callback-commit")
        job = await submit(c.rt, "bfl", "flux-dev", {"prompt": "crash"})
        assert await c.died() == -signal.SIGKILL
        assert (await c.rt.store.get_job(job.id)).status == Status.SUCCEEDED  # type: ignore[union-attr]
        await c.start()  # the provider's retry finds the event already recorded
        done = await c.wait(job.id)
        await assert_stored_once(c, done)
        await c.sim.drain()
        assert await ledger.count_events(c.rt.store, job.id) == 1


async def test_receiver_killed_in_the_middle_of_a_download(tmp_path: Path) -> None:
    async with crashable(tmp_path, Faults(runtime=0.1, image_size=300_000)) as c:
        await c.start("mid-download")
        job = await submit(c.rt, "bfl", "flux-dev", {"prompt": "crash"})
        assert await c.died() == -signal.SIGKILL
        folder = c.rt.settings.results / job.id
        assert [p.name for p in folder.iterdir() if p.name.endswith(".part")]  # the partial file is there...
        await c.start()
        done = await c.wait(job.id)
        await assert_stored_once(c, done)  # ...and gone after the restart, with one whole file in place


async def test_receiver_killed_in_the_middle_of_a_sweep(tmp_path: Path) -> None:
    async with crashable(tmp_path, Faults(runtime=0.1, drop=True)) as c:
        await c.start("mid-sweep")
        job = await submit(c.rt, "bfl", "flux-dev", {"prompt": "crash"})
        assert await c.died() == -signal.SIGKILL  # it had polled, and died before recording the answer
        await c.start()
        done = await c.wait(job.id)
        await assert_stored_once(c, done)
        assert c.sim.stats()["totals"]["polls"] == 2  # the dead sweeper's poll, and the one after its lease


async def test_sigterm_lets_an_inflight_download_finish(tmp_path: Path) -> None:
    async with crashable(tmp_path, Faults(runtime=0.1, slow_download=300_000.0, image_size=300_000)) as c:
        c.env["FLUXHOOK_DRAIN_TIMEOUT"] = "20"
        await c.start()
        job = await submit(c.rt, "bfl", "flux-dev", {"prompt": "drain"})
        await c.wait(job.id, frozenset({Status.SUCCEEDED}))
        await asyncio.sleep(0.2)  # let the download start (it takes about a second)
        assert c.process is not None
        c.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
        assert await c.died() == -signal.SIGTERM
        done = await c.rt.store.get_job(job.id)  # stored before the process exited
        assert done is not None
        await assert_stored_once(c, done)


async def test_sigterm_hands_back_what_cannot_finish_in_time(tmp_path: Path) -> None:
    async with crashable(tmp_path, Faults(runtime=0.1, slow_download=20_000.0, image_size=300_000)) as c:
        c.env["FLUXHOOK_DRAIN_TIMEOUT"] = "0.3"
        await c.start()
        job = await submit(c.rt, "bfl", "flux-dev", {"prompt": "drain"})
        await c.wait(job.id, frozenset({Status.SUCCEEDED}))
        await asyncio.sleep(0.3)
        assert c.process is not None
        c.process.send_signal(signal.SIGTERM)
        assert await c.died() == -signal.SIGTERM
        handed_back = await c.rt.store.get_job(job.id)
        assert handed_back is not None and handed_back.status == Status.SUCCEEDED
        assert handed_back.lease_owner is None  # free for the next process at once
        assert files_in(c.rt.settings.results / job.id) == []  # the partial download was removed

"""End to end: real uvicorn servers for the receiver and the simulator, over loopback.

Waits here are for events (a job reaching a status), bounded by a timeout; no
test depends on how fast the machine is, only on things eventually happening.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from receiver.config.settings import Settings
from receiver.engine.jobs import callback_url, submit
from receiver.engine.refusals import MISMATCH_NOTE
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.store import Job
from receiver.web.app import create_app
from submitter.signing import derive_job_keys, sign_bfl
from submitter.simulator import Faults, Simulator
from submitter.status import TERMINAL, Status
from tests import ledger
from tests.e2e.support import MASTER, env_for, run_cli, wait_for_status

pytestmark = pytest.mark.anyio

#: Operator credentials: /healthz shows its callback counters only with them.
OPS_TOKEN = "ops-token-0123456789"


@dataclass
class Stack:
    settings: Settings
    sim: Simulator
    sim_url: str
    public_url: str
    rt: Runtime  # the submitting side, like `fluxhook submit`
    http: httpx.AsyncClient

    async def wait(self, job_id: str, until: frozenset[Status] = TERMINAL) -> Job:
        return await wait_for_status(self.rt.store, job_id, until)

    async def health(self) -> dict[str, int]:
        answer = await self.http.get(f"{self.public_url}/healthz", headers={"authorization": f"Bearer {OPS_TOKEN}"})
        return answer.json()["callbacks"]


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, *, receiver: bool = True) -> AsyncIterator[Stack]:
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=(0.05, 0.1))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings.from_env(env_for(tmp_path, sim_url, public_url) | {"FLUXHOOK_METRICS_TOKEN": OPS_TOKEN})
        settings.results.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            if receiver:
                await stack.enter_async_context(serve_in_background(create_app(settings), sock))
            else:
                sock.close()
            rt = await stack.enter_async_context(Runtime.open(settings))
            http = await stack.enter_async_context(httpx.AsyncClient())
            yield Stack(settings, sim, sim_url, public_url, rt, http)
        await sim.aclose()


async def files_of(s: Stack, job_id: str) -> list[Path]:
    return sorted((s.settings.results / job_id).iterdir())


async def test_callback_arrives_and_the_file_is_stored_once(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        job = await submit(s.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        done = await s.wait(job.id)
        assert done.status == Status.STORED and done.callback_at is not None and done.polls == 0
        (path,) = await files_of(s, job.id)
        assert path.name == "0.png" and path.read_bytes().startswith(b"\x89PNG")
        stats = s.sim.stats()["tasks"][done.provider_job_id]
        assert (stats["submits"], stats["polls"], stats["deliveries"]) == (1, 0, 1)


async def test_dropped_callback_is_rescued_by_the_in_process_sweep(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("drop", Faults(drop=True, runtime=0.05))
        job = await submit(s.rt, "deerapi", "flux-pro-1.1", {"prompt": "drop me"})
        done = await s.wait(job.id)
        assert done.status == Status.STORED and done.callback_at is None and done.polls >= 1
        assert len(await files_of(s, job.id)) == 1


async def test_five_duplicate_callbacks_one_file_one_transition(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("dup", Faults(duplicate=5, runtime=0.05))
        job = await submit(s.rt, "cometapi", "flux-dev", {"prompt": "dup"})
        assert (await s.wait(job.id)).status == Status.STORED
        await s.sim.drain()
        assert await s.health() == {"accepted": 1, "duplicate": 4}
        assert await ledger.count_events(s.rt.store, job.id) == 1
        assert len(await files_of(s, job.id)) == 1


async def test_forged_and_tampered_callbacks_are_401_and_change_nothing(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("hold", Faults(drop=True, runtime=3600))
        job = await submit(s.rt, "bfl", "flux-dev", {"prompt": "hold"})
        before = await s.rt.store.get_job(job.id)
        assert before is not None
        url, secret = callback_url(s.public_url, MASTER.encode(), "bfl", job.id)
        body = json.dumps({"id": before.provider_job_id, "status": "Ready",
                           "result": {"sample": f"{s.sim_url}/delivery/x/sample.png"}}).encode()
        forged = url.rsplit("/", 1)[0] + "/" + derive_job_keys(b"x" * 32, "bfl", job.id).token
        answers = [
            await s.http.post(forged, content=body),
            await s.http.post(url, content=body, headers={"x-bfl-signature": sign_bfl("guess", body)}),
            await s.http.post(url, content=body + b" ", headers={"x-bfl-signature": sign_bfl(secret, body)}),
        ]
        assert [a.status_code for a in answers] == [401, 401, 401]
        current = await s.rt.store.get_job(job.id)
        # The first (a token from another key) is said on the job's note; nothing else changes.
        assert current is not None and current.note == MISMATCH_NOTE
        assert dataclasses.replace(current, note=before.note, updated_at=before.updated_at) == before
        assert await ledger.count_events(s.rt.store, job.id) == 0


async def test_oversized_body_is_413(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("hold", Faults(drop=True, runtime=3600))
        job = await submit(s.rt, "bfl", "flux-dev", {"prompt": "hold"})
        url, _ = callback_url(s.public_url, MASTER.encode(), "bfl", job.id)
        response = await s.http.post(url, content=b"x" * 1_000_000)
        assert response.status_code == 413
        assert (await s.http.get(f"{s.public_url}/healthz")).status_code == 200  # still serving


async def test_429_on_submit_is_retried(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("busy", Faults(submit_errors=(429, 429), runtime=0.05))
        job = await submit(s.rt, "bfl", "flux-dev", {"prompt": "busy"})
        assert (await s.wait(job.id)).status == Status.STORED
        assert s.sim.stats()["totals"]["submit_requests"] == 3


async def test_expired_url_is_re_polled(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("late", Faults(expired_url=True, runtime=0.05))
        job = await submit(s.rt, "bfl", "flux-dev", {"prompt": "late"})
        done = await s.wait(job.id)
        assert done.status == Status.STORED and done.repolls == 1
        assert s.sim.stats()["totals"]["deliveries_refused"] == 1


async def test_two_concurrent_cli_sweeps_never_double_work(tmp_path: Path) -> None:
    async with stack(tmp_path, receiver=False) as s:
        s.sim.add_rule("", Faults(drop=True, runtime=0.0))  # every prompt: no callbacks, so jobs are polled
        jobs = [await submit(s.rt, "bfl", "flux-dev", {"prompt": f"p{i}"}) for i in range(20)]
        env = env_for(tmp_path, s.sim_url, s.public_url)
        env["FLUXHOOK_POLL_AFTER"] = "0"
        for job in jobs:  # make every job due now, regardless of the clock
            await ledger.claim(s.rt.store, job.id, "test", now=0, lease=0)
            await s.rt.store.release(job.id, "test", expect=Status.SUBMITTED, next_check_at=0)
        (rc1, out1, err1), (rc2, out2, err2) = await asyncio.gather(
            run_cli(env, "sweep", "--json"), run_cli(env, "sweep", "--json")
        )
        assert rc1 == 0 and rc2 == 0, err1 + err2
        a, b = json.loads(out1), json.loads(out2)
        assert a.get("polled", 0) + b.get("polled", 0) == 20
        totals = s.sim.stats()["totals"]
        assert totals["polls"] == 20 and totals["deliveries"] == 20
        for job in jobs:
            assert (await s.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]
            assert len(await files_of(s, job.id)) == 1
        assert MASTER not in err1 + err2 + out1 + out2


async def test_cli_submit_wait_json_sweeps_until_the_file_is_stored(tmp_path: Path) -> None:
    """`fluxhook submit --wait` with no receiver running: the callback fails, the CLI's own sweep polls."""
    async with stack(tmp_path, receiver=False) as s:
        env = env_for(tmp_path, s.sim_url, s.public_url) | {"FLUXHOOK_POLL_AFTER": "0.2"}
        code, out, err = await run_cli(env, "submit", "--provider", "bfl", "--model", "flux-dev",
                                       "--prompt", "a fox", "--param", "seed=7", "--wait", "--json")
        assert code == 0, err
        view = json.loads(out)
        assert view["status"] == "stored" and view["polls"] >= 1
        (stored,) = view["files"]
        assert Path(stored["location"]).read_bytes().startswith(b"\x89PNG")
        task = s.sim.stats()["tasks"][view["provider_job_id"]]
        assert task["submits"] == 1
        assert MASTER not in out + err and "k-bfl" not in out + err

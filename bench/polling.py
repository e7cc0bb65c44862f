"""Provider API calls per job, and the time from a job's completion to its stored file:
fluxhook with callbacks working, with every callback dropped (rescued by polling), and the
naive polling client of the providers' docs (poll every 0.5 s from submit), in the same run.

The simulator finishes every job `RUNTIME` seconds after accepting it; FLUXHOOK_POLL_AFTER is
RUNTIME + 1 s, the expected runtime plus a grace period."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench._cli import main
from bench._setup import environment
from receiver.app import create_app
from receiver.jobs import submit
from receiver.runtime import Runtime
from receiver.serving import bind, serve_in_background
from receiver.settings import Settings
from submitter.simulator import Faults, Simulator
from submitter.status import TERMINAL, Status

RUNTIME = 2.0


async def fluxhook(jobs: int, drop: bool) -> dict[str, float]:
    sim = Simulator(default_faults=Faults(runtime=RUNTIME, drop=drop))
    async with serve_in_background(sim.app) as sim_url:
        with tempfile.TemporaryDirectory() as tmpdir:
            sock = bind()
            public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            settings = Settings.from_env(environment(
                Path(tmpdir), sim_url, public_url, FLUXHOOK_POLL_AFTER=str(RUNTIME + 1), FLUXHOOK_SWEEP_INTERVAL="0.1",
                # The naive client has no cap either: no job waits for a provider slot here.
                FLUXHOOK_BFL_MAX_ACTIVE="1000",
            ))
            async with serve_in_background(create_app(settings), sock), Runtime.open(settings) as rt:
                ids = [(await submit(rt, "bfl", "flux-dev", {"prompt": f"job {i}"})).id for i in range(jobs)]
                async with asyncio.timeout(120):
                    while True:
                        done = [await rt.store.get_job(i) for i in ids]
                        if all(j is not None and j.status in TERMINAL for j in done):
                            break
                        await asyncio.sleep(0.02)
        totals = sim.stats()["totals"]
        await sim.aclose()
    # From the moment the submit was sent (the ledger row) plus the runtime: an upper bound of the
    # completion time, measured the same way for the baseline.
    delays = [j.updated_at - (j.created_at + RUNTIME) for j in done if j and j.status == Status.STORED]  # type: ignore[operator]
    return {"stored": len(delays), "calls_per_job": (totals["submit_requests"] + totals["polls"]) / jobs,
            "polls_per_job": totals["polls"] / jobs, "completion_to_file_s": statistics.median(delays)}


async def naive(jobs: int) -> dict[str, float]:
    sim = Simulator(default_faults=Faults(runtime=RUNTIME, drop=True))
    async with serve_in_background(sim.app) as sim_url, httpx.AsyncClient(base_url=sim_url) as http:
        headers = {"x-key": "naive"}

        async def one(i: int) -> float:
            accepted = time.time()
            answer = (await http.post("/v1/flux-dev", json={"prompt": f"job {i}"}, headers=headers)).json()
            while True:
                await asyncio.sleep(0.5)
                result = (await http.get(answer["polling_url"], headers=headers)).json()
                if result["status"] == "Ready":
                    await http.get(result["result"]["sample"])
                    return time.time() - (accepted + RUNTIME)

        delays = await asyncio.gather(*(one(i) for i in range(jobs)))
        totals = sim.stats()["totals"]
    await sim.aclose()
    return {"stored": len(delays), "calls_per_job": (totals["submit_requests"] + totals["polls"]) / jobs,
            "polls_per_job": totals["polls"] / jobs, "completion_to_file_s": statistics.median(delays)}


async def run(size: str = "full") -> dict[str, object]:
    jobs = 5 if size == "tiny" else 50
    working = await fluxhook(jobs, drop=False)
    dropped = await fluxhook(jobs, drop=True)
    baseline = await naive(jobs)
    rows = []
    for label, result in (("callbacks working", working), ("callbacks dropped", dropped)):
        rows += [
            {"metric": f"API calls per job, {label}", "value": result["calls_per_job"], "unit": "calls",
             "baseline": baseline["calls_per_job"],
             "ratio": round(result["calls_per_job"] / baseline["calls_per_job"], 2),
             "note": f"{result['stored']}/{jobs} stored; polls per job {result['polls_per_job']}"},
            {"metric": f"completion to stored file, {label}", "value": round(result["completion_to_file_s"], 3),
             "unit": "s", "baseline": round(baseline["completion_to_file_s"], 3),
             "ratio": round(result["completion_to_file_s"] / baseline["completion_to_file_s"], 2), "note": "median"},
        ]
    return {"name": "provider calls per job", "rows": rows,
            "environment": {"jobs": jobs, "runtime_s": RUNTIME, "baseline": "naive client polling every 0.5 s"}}


if __name__ == "__main__":
    main(run)

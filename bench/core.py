"""Core-loop figures: callback ack latency and provider API calls per job.

    python -m bench.core --callbacks 1000 --concurrency 16 --jobs 50
    python -m bench.core --only replicate --jobs 50

1. Ack latency: a real `fluxhook serve` process (one uvicorn worker, SQLite,
   synchronous=FULL) receives signed terminal callbacks for jobs already in its
   ledger; each callback's time to the 2xx is measured by the client. The
   receiver then downloads each result from the simulator after answering.
2. API calls per job: jobs go through the simulator with callbacks working and
   with every callback dropped; the simulator counts submits and polls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import _cli, polling
from bench._setup import MASTER, environment, percentile
from receiver.config.settings import Settings
from receiver.engine.jobs import callback_url, submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.store import Job
from receiver.store.sqlite import SQLiteStore
from receiver.web.app import create_app
from submitter.signing import sign_bfl
from submitter.simulator import Faults, Simulator
from submitter.status import TERMINAL, Status


async def ack_latency(callbacks: int, concurrency: int) -> dict[str, float]:
    sim = Simulator(default_faults=Faults(runtime=0.0, drop=True))
    async with serve_in_background(sim.app) as sim_url:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            sock = bind()
            port = sock.getsockname()[1]
            sock.close()
            public_url = f"http://127.0.0.1:{port}"
            env = environment(tmp, sim_url, public_url)
            settings = Settings.from_env(env)
            store = SQLiteStore(settings.db)
            await store.open()
            now = time.time()
            bodies = []
            async with httpx.AsyncClient() as http:
                for i in range(callbacks):
                    # A real task at the simulator gives each callback a downloadable result.
                    answer = (await http.post(f"{sim_url}/v1/flux-dev", headers={"x-key": "k"},
                                              json={"prompt": f"bench {i}"})).json()
                    result = (await http.get(f"{sim_url}/v1/get_result", params={"id": answer["id"]},
                                             headers={"x-key": "k"})).json()
                    job = Job(id=f"fh_bench{i:06d}", provider="bfl", model="flux-dev", params={}, status=Status.QUEUED,
                              created_at=now, deadline_at=now + 3600)
                    await store.create_job(job)
                    await store.record_submit(job.id, answer["id"], None, now=now, next_check_at=now + 3600)
                    url, secret = callback_url(public_url, MASTER.encode(), "bfl", job.id)
                    body = json.dumps({"id": answer["id"], "status": "Ready", "result": result["result"]}).encode()
                    bodies.append((url, body, sign_bfl(secret, body)))
            await store.close()
            server = subprocess.Popen(  # noqa: S603, ASYNC220 - started once, before timing
                [sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning"],
                env={**os.environ, **env}, stderr=subprocess.DEVNULL,
            )
            try:
                async with httpx.AsyncClient() as http:
                    for _ in range(200):
                        try:
                            if (await http.get(f"{public_url}/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            await asyncio.sleep(0.05)
                times: list[float] = []
                statuses: dict[int, int] = {}
                queue = list(bodies)

                async def worker() -> None:
                    # A minimal keep-alive HTTP/1.1 client: the load generator must cost far less
                    # than the server it measures.
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    while queue:
                        url, body, signature = queue.pop()
                        path = url.removeprefix(public_url)
                        request = (
                            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                            f"x-bfl-signature: {signature}\r\ncontent-length: {len(body)}\r\n\r\n"
                        ).encode() + body
                        start = time.perf_counter()
                        writer.write(request)
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                        await reader.readexactly(length)
                        times.append(time.perf_counter() - start)
                        code = int(head.split(b" ")[1])
                        statuses[code] = statuses.get(code, 0) + 1
                    writer.close()

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                elapsed = time.perf_counter() - started
                # Wait until the receiver has stored every result.
                store = SQLiteStore(settings.db)
                await store.open()
                for _ in range(600):
                    counts = await store.counts()
                    if counts.get("stored", 0) == callbacks:
                        break
                    await asyncio.sleep(0.1)
                await store.close()
            finally:
                server.terminate()
                server.wait(10)
            await sim.aclose()
    return {
        "callbacks": callbacks,
        "concurrency": concurrency,
        "p50_ms": round(percentile(times, 50) * 1000, 2),
        "p99_ms": round(percentile(times, 99) * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
        "mean_ms": round(statistics.mean(times) * 1000, 2),
        "callbacks_per_s": round(callbacks / elapsed, 1),
        "statuses": statuses,  # type: ignore[dict-item]
        "stored": counts,  # type: ignore[dict-item]
    }


#: The receiver's FLUXHOOK_METRICS_TOKEN in replicate_events.
OPS_TOKEN = "bench-ops-token-0123456789"  # noqa: S105 - a local benchmark receiver's token


async def replicate_events(jobs: int, faults: Faults, events: list[str]) -> dict[str, float]:
    """Replicate predictions through the simulator: webhooks received vs processed, polls per job."""
    sim = Simulator(default_faults=faults)
    async with serve_in_background(sim.app) as sim_url:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            sock = bind()
            public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            settings = Settings.from_env(environment(
                tmp, sim_url, public_url, FLUXHOOK_REPLICATE_URL=sim_url, REPLICATE_API_TOKEN="bench",  # noqa: S106 - the simulator takes any token
                FLUXHOOK_POLL_AFTER="3", FLUXHOOK_SWEEP_INTERVAL="0.25",
                FLUXHOOK_METRICS_TOKEN=OPS_TOKEN,  # /healthz shows its callback counters to operators only
            ))
            async with serve_in_background(create_app(settings), sock), Runtime.open(settings) as rt:
                ids = [(await submit(rt, "replicate", "black-forest-labs/flux-schnell", {"prompt": f"job {i}"},
                                     events=events)).id for i in range(jobs)]
                for _ in range(1200):
                    done = [await rt.store.get_job(i) for i in ids]
                    if all(j is not None and j.status in TERMINAL for j in done):
                        break
                    await asyncio.sleep(0.1)
                await sim.drain()
                async with httpx.AsyncClient() as http:
                    health = await http.get(f"{public_url}/healthz", headers={"authorization": f"Bearer {OPS_TOKEN}"})
                    received = health.json()["callbacks"]
                stored = sum(1 for j in done if j is not None and j.status == Status.STORED)
                files = sum([len(await rt.store.files(i)) for i in ids])
        totals = sim.stats()["totals"]
        await sim.aclose()
    return {
        "jobs": jobs,
        "events": ",".join(events),  # type: ignore[dict-item]
        "stored": stored,
        "files": files,
        "webhooks_sent_per_job": totals["callbacks_sent"] / jobs,
        "accepted_per_job": received.get("accepted", 0) / jobs,
        "duplicates_per_job": received.get("duplicate", 0) / jobs,
        "rejected_per_job": received.get("rejected", 0) / jobs,
        "polls_per_job": totals["polls"] / jobs,
        "downloads_per_file": totals["deliveries"] / max(files, 1),
    }


async def main(args: argparse.Namespace) -> None:
    results: dict[str, object] = {}
    if args.only in (None, "bfl"):
        results["ack_latency"] = await ack_latency(args.callbacks, args.concurrency)
        results["calls_with_callbacks"] = await polling.fluxhook(args.jobs, drop=False)
        results["calls_without_callbacks"] = await polling.fluxhook(args.jobs, drop=True)
    if args.only in (None, "replicate"):
        every = ["start", "output", "logs", "completed"]
        results["replicate_all_events_2_outputs_duplicated"] = await replicate_events(
            args.jobs, Faults(runtime=2.0, outputs=2, duplicate=3, reorder=True), every)
        results["replicate_completed_dropped"] = await replicate_events(
            args.jobs, Faults(runtime=2.0, drop_completed=True), ["start", "completed"])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    parser = _cli.parser(__doc__, prog="python -m bench.core")
    parser.add_argument("--callbacks", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--only", choices=["bfl", "replicate"], help="run one group of measurements")
    asyncio.run(main(parser.parse_args()))

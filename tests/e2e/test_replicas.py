"""Replicas: three real `fluxhook serve` processes share one PostgreSQL ledger behind a round-robin
callback URL (bench/roundrobin.py), and one of them is SIGKILLed mid-run and started again.

The simulator runs in this process; each of the 120 jobs (bfl, deerapi, replicate) has its own rule,
drawn from a seeded RNG: dropped callbacks (or Replicate's `completed` webhook), duplicated ones,
progress callbacks, two-output predictions, slow downloads. Jobs are submitted here, as
`fluxhook submit` would, on a Runtime opened on the same schema. The victim is a replica holding a
download's lease once some jobs are stored; what it held at that moment (its leases, read from the
ledger) may be done twice, nothing else. It is restarted once the forwarder has refused a callback
for it (502, which the simulator retries; a job whose retries all fail is rescued by a poll).

Afterwards: every job `stored`, with exactly the files the simulator served (bytes and sha256), no
`.part` left; consecutive polls of one job never closer than the schedule allows (two replicas
polling the same job would be milliseconds apart), and no more polls than its lifetime allows; one
download per file (one more for a job the victim held); no 5xx answered to a callback but 503, or
the forwarder's 502 for the killed replica while it was down; no error in any replica's log.

Every wait is for an event, bounded; leases are 3 s so the victim's work is taken over quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bench._setup import free_port
from bench.roundrobin import RoundRobin
from bench.soak import logged_errors
from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import serve_in_background
from receiver.store import FileRecord, Job, Store
from submitter.simulator import Faults, Simulator, jpeg_image, png_image
from submitter.status import TERMINAL, Status
from tests.e2e.support import WAIT, env_for
from tests.pg import fresh_schema

pytestmark = pytest.mark.anyio

PROJECT = Path(__file__).resolve().parents[2]
REPLICAS = 3
JOBS = 120
SEED = 20250
SUBMITTERS = 4
#: Seconds between one submitter's jobs: the submissions span a few seconds, so the kill lands mid-run.
SUBMIT_PACE = 0.08
#: The kill comes once this many jobs are stored and a replica holds a download's lease.
KILL_AFTER_STORED = 30
POLL_AFTER = 0.5
POLL_MAX_INTERVAL = 1.0
LEASE = 3.0
#: The closest two polls of one job may come: a callback may pull the next poll to POLL_AFTER after
#: it (the scheduled interval is POLL_MAX_INTERVAL); the rest is slack for a loaded machine.
MIN_POLL_GAP = 0.6 * min(POLL_AFTER, POLL_MAX_INTERVAL)
#: The whole run (all jobs finished) is bounded by this many seconds.
RUN_WAIT = 90.0
BFL_MODELS = ("flux-dev", "flux-pro-1.1")
REPLICATE_MODEL = "black-forest-labs/flux-schnell"


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    index: int
    provider: str
    model: str
    faults: Faults

    @property
    def token(self) -> str:
        """Unique, and no token contains another: exactly one simulator rule matches each job."""
        return f"rr-{self.index:05d}:"

    @property
    def files(self) -> int:
        return self.faults.outputs if self.provider == "replicate" else 1

    def expected(self, task_id: str, n: int) -> bytes:
        """The bytes the simulator serves for file `n` of this job's provider task."""
        seed = f"{task_id}/out-{n}" if self.provider == "replicate" else task_id
        make = png_image if self.faults.image_format == "png" else jpeg_image
        return make(seed, self.faults.image_size)


def plan_jobs(count: int, rng: random.Random) -> list[Plan]:
    plans = []
    for index in range(count):
        provider = ("bfl", "deerapi", "replicate")[index % 3]
        replicate = provider == "replicate"
        faults: dict[str, Any] = {"runtime": round(rng.uniform(0.05, 0.3), 2)}
        if rng.random() < 0.2:
            faults["drop_completed" if replicate and rng.random() < 0.5 else "drop"] = True
            if rng.random() < 0.5:  # still running at the first polls: polled a few times over
                faults["runtime"] = round(rng.uniform(1.5, 3.0), 2)
        if rng.random() < 0.25:
            faults["duplicate"] = 3
        if not replicate and rng.random() < 0.15:
            faults["progress"] = True
        if replicate and rng.random() < 0.3:
            faults["outputs"] = 2
        if rng.random() < 0.1:
            faults["image_format"] = "jpeg"
        if rng.random() < 0.2:  # about a second per file: downloads are in flight when the kill comes
            faults |= {"image_size": 150_000, "slow_download": 150_000.0}
        model = REPLICATE_MODEL if replicate else rng.choice(BFL_MODELS)
        plans.append(Plan(index, provider, model, Faults(**faults)))
    return plans


# -- the replicas --------------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    port: int
    env: dict[str, str]
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.starts += 1
        with (self.logs / f"replica{self.index}-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "receiver.cli", "serve", "--port", str(self.port), "--log-level", "warning"],
                cwd=PROJECT, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log,
            )
        self.pids.append(self.process.pid)
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http, asyncio.timeout(WAIT):
            while True:
                assert self.process.poll() is None, f"replica {self.index} exited during start-up"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    def owns(self, lease_owner: str | None) -> bool:
        """Whether a lease is this replica's current process's (owner: host:pid:nonce)."""
        return self.process is not None and f":{self.process.pid}:" in (lease_owner or "")

    def kill(self) -> None:
        assert self.process is not None and self.process.poll() is None, f"replica {self.index} is not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    async def stop(self) -> int | None:
        """SIGTERM, as a service manager would (the exit status reports it); SIGKILL after a while."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT):
                    while self.process.poll() is None:
                        await asyncio.sleep(0.05)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def problems(self) -> list[str]:
        """Errors and tracebacks this replica logged, over all its runs."""
        return logged_errors(sorted(self.logs.glob(f"replica{self.index}-*.log")))


class Recorder:
    """Wraps the simulator's app: when each poll and each download of each provider task arrived
    (wall clock, as the ledger's times)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.inner = app
        self.polls: defaultdict[str, list[float]] = defaultdict(list)
        self.deliveries: defaultdict[str, list[float]] = defaultdict(list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            task = None
            if path.endswith("/v1/get_result"):  # BFL and its proxies
                task = parse_qs(scope.get("query_string", b"").decode()).get("id", [None])[0]
            elif "/v1/predictions/" in path:  # Replicate
                task = path.rsplit("/", 1)[1]
            if task:
                self.polls[task].append(time.time())
            if path.startswith("/delivery/"):
                self.deliveries[path.split("/")[2]].append(time.time())
        await self.inner(scope, receive, send)

    def timeline(self, job: Job, files: list[FileRecord]) -> str:
        """What happened to a job when, in seconds since it was created: for a failure message."""
        def since(times: list[float]) -> list[float]:
            return [round(t - job.created_at, 3) for t in times]

        task = job.provider_job_id or ""
        callback = since([job.callback_at]) if job.callback_at else "none"
        return (f"polls at {since(self.polls[task])}, downloads at {since(self.deliveries[task])},"
                f" callback at {callback}, finished at {since([job.updated_at or 0])},"
                f" download attempts {[f.attempts for f in files]}")


async def all_jobs(store: Store) -> list[Job]:
    return await store.list_jobs(None, limit=10 * JOBS)


async def wait_until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    try:
        async with asyncio.timeout(within):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f} s waiting for {what}") from None


# -- the test ------------------------------------------------------------------------------------


async def test_three_replicas_behind_round_robin_survive_a_kill(tmp_path: Path) -> None:
    plans = plan_jobs(JOBS, random.Random(SEED))
    by_token = {p.token: p for p in plans}
    answers: Counter[int] = Counter()  # every answer the simulator's webhook sender got

    async def count_answer(response: httpx.Response) -> None:
        answers[response.status_code] += 1

    sim_http = httpx.AsyncClient(timeout=30.0, trust_env=False, event_hooks={"response": [count_answer]})
    sim = Simulator(http=sim_http, callback_retries=(0.3, 0.6, 1.2, 2.4, 4.8))
    for plan in plans:
        sim.add_rule(plan.token, plan.faults)
    recorder = Recorder(sim.app)
    ports = [free_port() for _ in range(REPLICAS)]
    rr = RoundRobin([f"http://127.0.0.1:{port}" for port in ports])
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        async with (
            fresh_schema() as db,
            serve_in_background(recorder) as sim_url,
            serve_in_background(rr.app) as public_url,
        ):
            env = env_for(tmp_path, sim_url, public_url, db=db) | {
                "FLUXHOOK_POLL_AFTER": str(POLL_AFTER),
                "FLUXHOOK_POLL_MAX_INTERVAL": str(POLL_MAX_INTERVAL),
                "FLUXHOOK_SWEEP_INTERVAL": "0.2",
                "FLUXHOOK_LEASE_SECONDS": str(LEASE),
                "FLUXHOOK_DB_POOL": "5",
                "FLUXHOOK_MAX_BODY": "65536",
                "FLUXHOOK_DRAIN_TIMEOUT": "5",
                # The simulator has no caps: none here either, so no job waits for a slot.
                "FLUXHOOK_BFL_MAX_ACTIVE": "1000",
                "FLUXHOOK_DEERAPI_MAX_ACTIVE": "1000",
                "FLUXHOOK_REPLICATE_MAX_ACTIVE": "1000",
            }
            settings = Settings.from_env(env)
            settings.results.mkdir(parents=True)
            replicas = [Replica(i, port, env, logs) for i, port in enumerate(ports)]
            try:
                await asyncio.gather(*(r.start() for r in replicas))  # they migrate the empty schema together
                async with Runtime.open(settings) as rt:
                    problems = await run_and_audit(rt, sim, recorder, rr, replicas, plans, by_token, answers)
            except BaseException as exc:  # what the replicas logged helps explain it
                exc.add_note("\n".join(line for r in replicas for line in r.problems()[:20]))
                raise
            finally:
                exits = [await r.stop() for r in replicas]
        if exits != [-signal.SIGTERM] * REPLICAS:  # none died by itself
            problems.append(f"the replicas exited {exits}")
        problems += [f"logged: {line}" for r in replicas for line in r.problems()]
        assert not problems, "\n".join(problems[:60])
    finally:
        await rr.aclose()
        await sim.aclose()
        await sim_http.aclose()


async def run_and_audit(
    rt: Runtime, sim: Simulator, recorder: Recorder, rr: RoundRobin, replicas: list[Replica],
    plans: list[Plan], by_token: dict[str, Plan], answers: Counter[int],
) -> list[str]:
    """Submit every job, kill a replica mid-run and start it again, wait for the end: what went wrong."""
    store = rt.store
    queue = list(plans)

    async def submitter() -> None:
        while queue:
            plan = queue.pop(0)
            await submit(rt, plan.provider, plan.model, {"prompt": plan.token})
            await asyncio.sleep(SUBMIT_PACE)

    async def submit_all() -> None:
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))

    submitting = asyncio.create_task(submit_all())
    try:
        # -- the kill: once some jobs are stored, a replica holding a download's lease ---------------
        victim: Replica | None = None

        async def download_held() -> bool:
            nonlocal victim
            jobs = await all_jobs(store)
            if sum(j.status == Status.STORED for j in jobs) < KILL_AFTER_STORED:
                return False
            downloading = Counter(
                r.index for j in jobs if j.status == Status.SUCCEEDED for r in replicas if r.owns(j.lease_owner)
            )
            if not downloading:
                return False
            victim = replicas[downloading.most_common(1)[0][0]]
            return True

        await wait_until(download_held, WAIT, f"{KILL_AFTER_STORED} jobs stored and a download in flight")
        assert victim is not None
        killed_pid = victim.process.pid if victim.process else -1
        kill_at = time.monotonic()
        victim.kill()
        # What the dead process held: only these jobs may see a poll or a download twice.
        held = {j.id: j for j in await all_jobs(store) if f":{killed_pid}:" in (j.lease_owner or "")}
        assert any(j.status == Status.SUCCEEDED for j in held.values()), "the kill caught no download in flight"
        stored_at_kill = sum(j.status == Status.STORED for j in await all_jobs(store))
        assert stored_at_kill < JOBS  # mid-run

        async def refused_while_down() -> bool:
            return any(f.error and f.backend == victim.index for f in rr.log)  # type: ignore[union-attr]

        await wait_until(refused_while_down, WAIT, "a callback sent to the killed replica")
        await victim.start()
        up_at = time.monotonic()

        # -- every job finishes ------------------------------------------------------------------
        await submitting

        async def all_finished() -> bool:
            counts = await store.counts()
            return sum(counts.get(str(s), 0) for s in TERMINAL) == sum(counts.values()) == JOBS

        await wait_until(all_finished, RUN_WAIT, f"all {JOBS} jobs to finish")
        async with asyncio.timeout(WAIT):  # late duplicates and retries land while the replicas run
            await sim.drain()
    finally:
        submitting.cancel()
        await asyncio.gather(submitting, return_exceptions=True)

    # -- the audit ---------------------------------------------------------------------------------
    jobs = await all_jobs(store)
    tasks = sim.stats()["tasks"]
    results = rt.settings.results
    problems: list[str] = []
    recorded: set[Path] = set()
    for job in jobs:
        plan = by_token[str(job.params["prompt"])]
        seen = tasks.get(job.provider_job_id or "", {})
        where = f"job {job.id} ({plan.token} {job.provider}, task {job.provider_job_id}, {plan.faults})"
        if job.status != Status.STORED:
            problems.append(f"{where}: ended {job.status} ({job.error}); the provider saw {seen}")
            continue
        assert job.provider_job_id is not None
        files = await store.files(job.id)
        recorded.update(results / f.path for f in files if f.path)
        if [f.n for f in files] != list(range(plan.files)) or not all(f.stored for f in files):
            problems.append(f"{where}: file records {[(f.n, f.path) for f in files]} for {plan.files} outputs")
            continue
        for f in files:
            data = (results / str(f.path)).read_bytes()
            expected = plan.expected(job.provider_job_id, f.n)
            if data != expected or hashlib.sha256(data).hexdigest() != f.sha256:
                problems.append(f"{where}: file {f.path} is not what the provider served")
        # One download per file; one more only if the killed replica was on this job.
        extra = 1 if job.id in held else 0
        if not plan.files <= seen["deliveries"] <= plan.files + extra:
            problems.append(f"{where}: {seen['deliveries']} downloads of {plan.files} file(s)"
                            f"{' (held by the killed replica)' if extra else ''}; {recorder.timeline(job, files)}")
        # Polls: never two closer than the schedule allows, and no more than the job's life allows.
        times = sorted(recorder.polls.get(job.provider_job_id, []))
        if len(times) != seen["polls"]:
            problems.append(f"{where}: recorded {len(times)} polls, the simulator counted {seen['polls']}")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if gaps and min(gaps) < MIN_POLL_GAP:
            problems.append(f"{where}: polled {len(times)} times, two of them {min(gaps):.3f} s apart;"
                            f" {recorder.timeline(job, files)}")
        assert job.updated_at is not None
        life = job.updated_at - job.created_at
        allowed = 1 + max(0.0, life - POLL_AFTER) / min(POLL_AFTER, POLL_MAX_INTERVAL) + extra
        if len(times) > allowed:
            problems.append(f"{where}: polled {len(times)} times in {life:.2f} s (at most {allowed:.1f});"
                            f" {recorder.timeline(job, files)}")
    if len(jobs) != JOBS:
        problems.append(f"{len(jobs)} jobs in the ledger, {JOBS} submitted")
    for path in sorted(results.rglob("*")):
        if path.is_file() and (path.name.endswith(".part") or path not in recorded):
            problems.append(f"stray or partial file {path.relative_to(results)}")
    # Callback answers: 5xx only as 503, or the forwarder's 502 for the killed replica while it was down.
    for f in rr.log:
        down = f.backend == victim.index and f.ended >= kill_at and f.started <= up_at
        if f.status >= 500 and f.status != 503 and not (f.status == 502 and f.error and down):
            problems.append(f"callback answered {f.status} by replica {f.backend}: {f}")
    own_502 = sum(1 for f in rr.log if f.error)
    if answers[502] != own_502 or any(s >= 500 for s in answers if s not in (502, 503)):
        problems.append(f"the simulator got answers {dict(answers)}; the forwarder made {own_502} 502s")
    served = Counter(f.backend for f in rr.log if f.error is None)
    if len(served) != REPLICAS:
        problems.append(f"callbacks were answered by replicas {dict(served)} only")
    if problems:
        problems.insert(0, f"killed replica {victim.index} (pid {killed_pid}) holding {sorted(held)},"
                           f" {stored_at_kill} jobs stored then; {len(problems)} problem(s):")
    return problems

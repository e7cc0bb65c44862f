"""Fault-injection soak: many jobs, a misbehaving provider, a receiver killed mid-run, an attacker.

    python -m bench.soak --jobs 1000 --kills 2
    python -m bench.soak --jobs 200 --seed 7 --workdir /tmp/soak --json
    python -m bench.soak --jobs 300 --db postgresql://postgres@127.0.0.1:5432/test --replicas 3
    python -m bench.soak --jobs 200 --replicas 3 --results s3://soak/results

The provider simulator runs in this process; the receiver is a real
`fluxhook serve` process on loopback sharing one SQLite database with the
submitting side here (like `fluxhook submit`). With `--db postgresql://...`
the ledger is in PostgreSQL instead: in a schema the soak creates there and
drops at the end (it is kept, like the work folder, with `--workdir` or when
the run fails), or, if the URL names one (`?search_path=...`), in that schema
as it is. With `--replicas N` there are N receiver processes behind a
round-robin forwarder (bench/roundrobin.py) that all callbacks go through; they
share the ledger and the results folder, and each kill picks one of them at
random (the forwarder answers 502 for it until it is back, and the sender
retries). With `--results s3://bucket/prefix` the result files go to an S3-compatible
object store instead of the work folder: with FLUXHOOK_S3_ENDPOINT set, that endpoint
(and the AWS_* credentials in the environment; the bucket must exist and the prefix should
be empty), otherwise a moto S3 server the soak starts on loopback, with the bucket created
and dummy credentials. The database URL's password is never printed. Jobs are spread over `bfl`,
`deerapi` (a BFL proxy) and `replicate`; each gets its own simulator rule,
matched by a unique token at the start of its prompt, drawn from a seeded RNG:
dropped callbacks (or, for Replicate, a dropped `completed` webhook),
duplicated and reordered callbacks, expired result URLs, provider failures and
moderation, two-output predictions, bursts of 429/503 on submit, runtimes of
0.05 to 1.5 s. Meanwhile a receiver is SIGKILLed `--kills` times and
restarted on the same port, and an attacker sends forged callbacks for about
5% of the jobs (wrong or borrowed tokens, bad, tampered, stale or missing
signatures, result URLs pointing at the attacker's own server).

When every job has finished (or `--timeout` passed, or no job finished for
`--stall` seconds), the ledger and the result folder are audited and one line
is printed on stdout (details of any problem go to stderr):

    soak: jobs=1000 stored=930 failed_by_provider=70 lost=0 duplicates_stored=0 forgeries_accepted=0 \
http_500=0 polls_per_rescued_job=1.3 kills=2 replicas=1 db=sqlite results=local wall=412.5s

- lost: jobs not finished, jobs the provider completed that did not end
  `stored`, jobs the provider failed whose verdict was not recorded, and
  stored jobs whose files are missing, short, or differ from what the provider
  served (checked byte for byte, and against the recorded sha256; in S3, also
  against the object's own size and sha256 metadata);
- duplicates_stored: files on disk (objects under the prefix, in S3) that the
  ledger does not record, leftover `.part` files (staging objects
  `{job}/.{n}.{random}.part`), and file records beyond the provider's output count;
- forgeries_accepted: forged callbacks answered 2xx, plus any request the
  receiver made to the attacker's server;
- http_500: 5xx answers other than 503 (which asks the sender to retry), as
  seen by the attacker and by the simulator's webhook sender; with replicas,
  also any 502 the forwarder gave for a replica that had not been killed;
- polls_per_rescued_job: the simulator's polls per job stored without its
  result callback.

The exit status is 1 if any of lost, duplicates_stored, forgeries_accepted or
http_500 is non-zero, if a receiver died without being killed, or if the run
timed out or stalled.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench import _cli
from bench._setup import MASTER, environment
from bench.roundrobin import RoundRobin, is_forwarder_error
from receiver.config.settings import Settings
from receiver.engine.jobs import callback_url, submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.store import FileRecord, Job
from receiver.store.backends import is_postgres_url
from submitter.signing import derive_job_keys, sign_bfl, sign_standard
from submitter.simulator import Faults, Simulator, jpeg_image, png_image
from submitter.status import TERMINAL, Status
from submitter.urls import masked_url

PROJECT = Path(__file__).resolve().parent.parent
BFL_MODELS = ("flux-dev", "flux-pro-1.1")
REPLICATE_MODEL = "black-forest-labs/flux-schnell"
BFL_FAILURES = ("error", "content_moderated", "request_moderated")
REPLICATE_FAILURES = ("error", "content_moderated", "canceled", "aborted")
PROVIDER_VERDICTS = frozenset({Status.FAILED, Status.MODERATED, Status.CANCELED})
#: A key that is not the receiver's: it derives plausible-looking but wrong tokens and secrets.
WRONG_MASTER = b"soak-attacker-guess-0123456789abcdef01234567"
ATTACK_SHARE = 0.05
SUBMITTERS = 8


# -- the plan: what each job meets at the provider ---------------------------------------


@dataclass(frozen=True)
class Plan:
    index: int
    provider: str
    model: str
    faults: Faults
    tags: tuple[str, ...]
    #: Replicate's webhook filter; None: fluxhook's default (start, completed).
    events: tuple[str, ...] | None = None

    @property
    def token(self) -> str:
        """Unique, and no token contains another: exactly one simulator rule matches each job."""
        return f"soak-{self.index:06d}:"

    @property
    def prompt(self) -> str:
        return " ".join((self.token, *self.tags))

    @property
    def replicate(self) -> bool:
        return self.provider == "replicate"

    @property
    def succeeds(self) -> bool:
        return self.faults.outcome == "ready"

    @property
    def files(self) -> int:
        return self.faults.outputs if self.replicate else 1


def plan_job(index: int, rng: random.Random) -> Plan:
    provider = rng.choice(("bfl", "deerapi", "replicate"))
    replicate = provider == "replicate"
    faults: dict[str, Any] = {"runtime": round(rng.uniform(0.05, 1.5), 2)}
    tags: list[str] = []

    def add(tag: str, **changes: Any) -> None:
        tags.append(tag)
        faults.update(changes)

    if rng.random() < 0.20:
        if replicate and rng.random() < 0.5:
            add("drop-completed", drop_completed=True)
        else:
            add("drop", drop=True)
    if rng.random() < 0.30:
        add("dup", duplicate=3)
    if rng.random() < 0.10:
        add("reorder", reorder=True)
    if rng.random() < 0.05:
        add("expired", expired_url=True)
    if rng.random() < 0.04:
        outcome = rng.choice(REPLICATE_FAILURES if replicate else BFL_FAILURES)
        add(outcome, outcome=outcome)
    if rng.random() < 0.10:
        errors = rng.choice(((429,), (503, 429)))
        add("busy-" + "-".join(map(str, errors)), submit_errors=errors)
    if rng.random() < 0.10:
        add("jpeg", image_format="jpeg")
    if replicate and rng.random() < 0.30:
        add("two", outputs=2)
    if not replicate and rng.random() < 0.10:
        add("progress", progress=True)
    if not replicate and rng.random() < 0.10:
        add("echo", signature="echo")
    events = None
    if replicate and rng.random() < 0.30:
        events = ("start", "output", "logs", "completed")
        tags.append("all-events")
    model = REPLICATE_MODEL if replicate else rng.choice(BFL_MODELS)
    return Plan(index, provider, model, Faults(**faults), tuple(tags), events)


def index_of(job: Job) -> int | None:
    """The plan index named by a job's prompt token."""
    prompt = str(job.params.get("prompt", ""))
    head = prompt.partition(":")[0]
    return int(head[5:]) if head.startswith("soak-") and head[5:].isdigit() else None


# -- the receiver process ----------------------------------------------------------------



def logged_errors(paths: list[Path]) -> list[str]:
    """ERROR/CRITICAL lines and tracebacks in these log files, each prefixed with its file's name."""
    return [f"{path.name}: {line}" for path in paths for line in path.read_text(errors="replace").splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]

class Receiver:
    """A `fluxhook serve` process on a fixed port: started, SIGKILLed and started again.
    `name` prefixes its log files (one per start) in `logs`."""

    def __init__(self, port: int, env: dict[str, str], logs: Path, name: str = "receiver", index: int = 0) -> None:
        self.name = name
        self.index = index
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **env}
        self.logs = logs
        self.starts = 0
        self.kills = 0
        self.crashes = 0
        self.process: asyncio.subprocess.Process | None = None
        self._log: TextIO | None = None

    async def start(self, within: float = 30.0) -> None:
        """Start and wait until it answers; retry while the port is not free yet."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            while True:
                self.starts += 1
                self._close_log()
                self._log = (self.logs / f"{self.name}-{self.starts}.log").open("w")
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "receiver.cli", "serve", "--port", str(self.port),
                    "--log-level", "warning",
                    cwd=PROJECT, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=self._log,
                )
                while self.process.returncode is None and loop.time() < end:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{self.url}/healthz")).status_code == 200:
                            return
                    await asyncio.sleep(0.05)
                if self.process.returncode is None:  # still not answering: give up
                    await self._kill()
                if loop.time() >= end:
                    raise RuntimeError(f"{self.name} did not start on port {self.port}; see {self._log.name}")
                await asyncio.sleep(0.2)  # e.g. the port is still held: try again

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no drain, no lease released, partial downloads left behind."""
        self.kills += 1
        await self._kill()

    async def _kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, as a service manager would; SIGKILL if it does not exit in time."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 40.0)
            except TimeoutError:
                await self._kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def error_lines(self) -> list[str]:
        """ERROR/CRITICAL lines and tracebacks the receiver logged, over all its runs."""
        return logged_errors(sorted(self.logs.glob(f"{self.name}-*.log")))


# -- the attacker ------------------------------------------------------------------------


@dataclass
class Forgery:
    kind: str
    url: str
    body: bytes
    headers: dict[str, str]


def _random_whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _standard_headers(secret: str, body: bytes, *, age: float = 0.0) -> dict[str, str]:
    message_id = "msg_" + uuid.uuid4().hex
    timestamp = int(time.time() - age)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(secret, message_id, timestamp, body),
    }


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


class Attacker:
    """Forges callbacks for real jobs while they run; a 2xx to any of them is a failure.

    It knows what a leaked callback URL or a leaked account secret would give
    away, so besides guessed tokens it also tries real tokens with bad
    signatures and real signatures on the wrong job, provider or time.
    """

    def __init__(self, http: httpx.AsyncClient, public_url: str, replicate_secret: str, site_url: str) -> None:
        self.http = http
        self.public_url = public_url
        self.replicate_secret = replicate_secret
        self.site_url = site_url
        self.statuses: Counter[int] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.accepted: list[str] = []
        self.unanswered = 0

    def forgeries(self, job: Job, other: Job) -> list[Forgery]:
        master = MASTER.encode()
        task = job.provider_job_id or uuid.uuid4().hex
        own_url, own_secret = callback_url(self.public_url, master, job.provider, job.id)
        own_token = own_url.rsplit("/", 1)[1]
        guessed_url, guessed_secret = callback_url(self.public_url, WRONG_MASTER, job.provider, job.id)
        borrowed_token = derive_job_keys(master, other.provider, other.id).token
        borrowed_url = f"{self.public_url}/hooks/{job.provider}/{job.id}/{borrowed_token}"
        loot = f"{self.site_url}/loot/{job.id}/sample.png"
        if job.provider == "replicate":
            body = _json({"id": task, "status": "succeeded", "output": [loot], "error": None, "logs": "",
                          "completed_at": "2030-01-01T00:00:00.000000Z", "data_removed": False})
            genuine = _json({"id": task, "status": "processing", "output": None, "logs": ""})
            tampered = _standard_headers(self.replicate_secret, genuine)
            # The proxies' path authenticates by token alone: a token moved there must not pass.
            swapped = f"{self.public_url}/hooks/deerapi-replicate/{job.id}/{own_token}"
            bfl_body = _json({"id": task, "status": "Ready", "result": {"sample": loot}})
            return [
                Forgery("guessed-token", guessed_url, body, _standard_headers(_random_whsec(), body)),
                Forgery("borrowed-token", borrowed_url, body, _standard_headers(self.replicate_secret, body)),
                Forgery("provider-swap", swapped, body, _standard_headers(self.replicate_secret, body)),
                Forgery("tampered-body", own_url, body, tampered),
                Forgery("wrong-signature", own_url, body, _standard_headers(_random_whsec(), body)),
                Forgery("no-signature", own_url, body, {"content-type": "application/json"}),
                Forgery("stale-replay", own_url, body, _standard_headers(self.replicate_secret, body, age=3600)),
                Forgery("bfl-shaped", own_url, bfl_body, {"x-bfl-signature": sign_bfl(own_secret, bfl_body)}),
            ]
        body = _json({"id": task, "status": "Ready", "result": {"sample": loot}})
        genuine = _json({"id": task, "status": "Pending", "progress": 10})
        other_secret = derive_job_keys(master, other.provider, other.id).webhook_secret
        swap = "deerapi" if job.provider != "deerapi" else "bfl"
        swapped = f"{self.public_url}/hooks/{swap}/{job.id}/{own_token}"
        replicate_body = _json({"id": task, "status": "succeeded", "output": [loot]})
        return [
            Forgery("guessed-token", guessed_url, body, {"x-bfl-signature": sign_bfl(guessed_secret, body)}),
            Forgery("borrowed-token", borrowed_url, body, {"x-bfl-signature": sign_bfl(other_secret, body)}),
            Forgery("provider-swap", swapped, body, {"x-bfl-signature": sign_bfl(own_secret, body)}),
            Forgery("tampered-body", own_url, body, {"x-bfl-signature": sign_bfl(own_secret, genuine)}),
            Forgery("wrong-signature", own_url, body, {"x-bfl-signature": sign_bfl(guessed_secret, body)}),
            Forgery("wrong-echo-secret", own_url, body, {"x-webhook-secret": guessed_secret}),
            Forgery("cross-job-signature", own_url, body, {"x-bfl-signature": sign_bfl(other_secret, body)}),
            Forgery("replicate-shaped", own_url, replicate_body,
                    {**_standard_headers(_random_whsec(), replicate_body),
                     "x-bfl-signature": sign_bfl(guessed_secret, replicate_body)}),
        ]

    async def send(self, forgery: Forgery, within: float = 20.0) -> None:
        """POST one forgery, retrying while the receiver is down (it may be between kill and restart;
        behind the forwarder, its 502 says so)."""
        end = time.monotonic() + within
        while True:
            try:
                response = await self.http.post(forgery.url, content=forgery.body, headers=forgery.headers)
                if not is_forwarder_error(response):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() >= end:
                self.unanswered += 1
                return
            await asyncio.sleep(0.2)
        self.statuses[response.status_code] += 1
        self.by_kind[forgery.kind] += 1
        if response.is_success:
            self.accepted.append(f"{forgery.kind} -> {response.status_code} {response.text[:200]}")

    async def run(
        self, targets: list[int], jobs: dict[int, str], submitted: asyncio.Event, rt: Runtime, rng: random.Random
    ) -> None:
        """Attack each target once its job has a provider task (or has ended), as the run goes on."""
        pending = list(targets)
        while pending:
            for index in list(pending):
                job_id = jobs.get(index)
                if job_id is None and submitted.is_set():  # its submit raised: nothing to attack
                    pending.remove(index)
                    continue
                job = await rt.store.get_job(job_id) if job_id else None
                if job is None or (job.provider_job_id is None and job.status not in TERMINAL):
                    continue
                others = [i for i in jobs if i != index]
                other = await rt.store.get_job(jobs[rng.choice(others)]) if others else None
                for forgery in self.forgeries(job, other or job):
                    await self.send(forgery)
                pending.remove(index)
                await asyncio.sleep(rng.uniform(0.0, 0.2))
            await asyncio.sleep(0.2)


class AttackerSite:
    """The attacker's own result host: serves an image and counts who comes to fetch it."""

    def __init__(self) -> None:
        self.fetches = 0
        self.app = Starlette(routes=[Route("/{path:path}", self._serve, methods=["GET", "HEAD"])])

    async def _serve(self, request: Request) -> Response:
        self.fetches += 1
        return Response(png_image("attacker"), media_type="image/png")


# -- the audit ---------------------------------------------------------------------------


@dataclass
class Audit:
    submitted: int = 0
    stored: int = 0
    failed_by_provider: int = 0
    lost: dict[str, str] = field(default_factory=dict)  # job (or plan token) -> why
    duplicates: list[str] = field(default_factory=list)
    rescued: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


def expected_image(plan: Plan, provider_job_id: str, n: int) -> bytes:
    """The exact bytes the simulator serves for file `n` of this job."""
    seed = f"{provider_job_id}/out-{n}" if plan.replicate else provider_job_id
    return (png_image if plan.faults.image_format == "png" else jpeg_image)(seed)


class Files:
    """The stored result files as the audit reads them: the local folder, or an S3 bucket's prefix."""

    async def read(self, path: str) -> tuple[bytes, str | None] | None:
        """The file recorded as `path`, and the sha256 the store itself keeps for it (S3), or None."""
        raise NotImplementedError

    async def names(self) -> list[str]:
        """Every file (object) present, relative to the root."""
        raise NotImplementedError

    @staticmethod
    def partial(name: str) -> bool:
        raise NotImplementedError


class LocalFiles(Files):
    def __init__(self, root: Path) -> None:
        self.root = root

    async def read(self, path: str) -> tuple[bytes, str | None] | None:
        file = self.root / path
        return (file.read_bytes(), None) if file.is_file() else None

    async def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return [str(p.relative_to(self.root)) for p in sorted(self.root.rglob("*")) if p.is_file()]

    @staticmethod
    def partial(name: str) -> bool:
        return name.endswith(".part")


class S3Files(Files):
    """Through the receiver's own S3ResultStore (its obstore client, prefix and metadata)."""

    def __init__(self, store: Any) -> None:
        import obstore

        self.ob, self.store = obstore, store

    async def read(self, path: str) -> tuple[bytes, str | None] | None:
        stat = await self.store.stat(path)
        if stat is None:
            return None
        got = await self.ob.get_async(self.store.store, self.store.full(path))
        data = bytes(await got.bytes_async())
        if stat.size != len(data):
            return data, f"size {stat.size} in the object's metadata"
        return data, stat.sha256 or "no sha256 metadata"

    async def names(self) -> list[str]:
        root = f"{self.store.prefix}/" if self.store.prefix else ""
        found = []
        async for batch in self.ob.list(self.store.store, prefix=root or None):
            found.extend(meta["path"][len(root):] for meta in batch)
        return sorted(found)

    @staticmethod
    def partial(name: str) -> bool:  # receiver/results/s3.py's staging objects: {job}/.{n}.{random}.part
        return name.rsplit("/", 1)[-1].startswith(".") or name.endswith(".part")


def files_of(rt: Runtime) -> Files:
    if rt.settings.results_url:
        return S3Files(rt.results)
    return LocalFiles(rt.settings.results)


async def audit(rt: Runtime, plans: list[Plan], tasks: dict[str, dict[str, Any]]) -> Audit:
    """Check the ledger and the result files against the plan; `tasks`: the simulator's view of each task."""
    result = Audit()
    stored_files = files_of(rt)
    jobs = await rt.store.list_jobs(None, limit=2 * len(plans) + 100)
    by_index = {index_of(job): job for job in jobs}
    recorded: set[str] = set()
    result.submitted = len(jobs)
    for job in jobs:
        result.statuses[str(job.status)] += 1
        if index_of(job) is None:
            result.lost[job.id] = "a job the soak did not plan"
    for plan in plans:
        job = by_index.get(plan.index)
        if job is None:
            result.lost[plan.token] = "never recorded"
            continue
        files = await rt.store.files(job.id)
        recorded.update(f.path for f in files if f.path)
        if len(files) > plan.files:
            result.duplicates.append(f"{job.id}: {len(files)} file records for {plan.files} outputs")
        why = await _check(plan, job, files, stored_files)
        if why is not None:
            seen = tasks.get(job.provider_job_id or "", {})
            provider_view = ", ".join(f"{seen.get(k, 0)} {k}" for k in ("polls", "callbacks_sent", "deliveries"))
            result.lost[job.id] = f"{why} ({plan.provider}, {plan.prompt!r}; the provider saw {provider_view})"
        elif job.status == Status.STORED:
            result.stored += 1
            if job.callback_at is None or plan.faults.drop_completed:
                result.rescued += 1
        else:
            result.failed_by_provider += 1
    for name in await stored_files.names():
        if stored_files.partial(name) or name not in recorded:
            result.duplicates.append(name)
    return result


async def _check(plan: Plan, job: Job, files: list[FileRecord], stored_files: Files) -> str | None:
    """Why this job counts as lost, or None."""
    if job.status not in TERMINAL:
        return f"still {job.status}"
    if not plan.succeeds:
        if job.status in PROVIDER_VERDICTS and job.error:
            return None
        return f"the provider said {plan.faults.outcome!r}, the job ended {job.status} ({job.error})"
    if job.status != Status.STORED:
        return f"the provider delivered, the job ended {job.status} ({job.error})"
    stored = [f for f in files if f.path]
    if len(stored) < plan.files:
        return f"stored with {len(stored)} of {plan.files} files"
    for record in stored:
        assert record.path is not None
        found = await stored_files.read(record.path)
        if found is None:
            return f"file {record.path} missing"
        data, kept_sha256 = found
        if hashlib.sha256(data).hexdigest() != record.sha256 or len(data) != record.size:
            return f"file {record.path} does not match its recorded sha256/size"
        if kept_sha256 is not None and kept_sha256 != record.sha256:
            return f"file {record.path}: the store keeps {kept_sha256!r}, the ledger {record.sha256}"
        if job.provider_job_id is None or data != expected_image(plan, job.provider_job_id, record.n):
            return f"file {record.path} is not what the provider served"
    return None


# -- the ledger ------------------------------------------------------------------------


@dataclass
class Ledger:
    """Where the run's ledger lives: FLUXHOOK_DB for every process, and what the soak made for it."""

    db: str
    #: The PostgreSQL schema the soak created (and drops when done), or None.
    schema: str | None = None
    admin_url: str | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "postgresql" if is_postgres_url(self.db) else "sqlite"

    @property
    def display(self) -> str:
        """As it may be printed: the password masked."""
        return masked_url(self.db)


def _search_path(url: str) -> str | None:
    return (parse_qs(urlsplit(url).query).get("search_path") or [None])[0]


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}search_path={schema}"


async def open_ledger(db: str | None, workdir: Path) -> Ledger:
    """The ledger for `--db`: a SQLite file (in the work folder by default), or PostgreSQL, in a new
    schema of its own unless the URL names one (`search_path`), which is then used as it is."""
    if db is None:
        return Ledger(str(workdir / "soak.db"))
    if not is_postgres_url(db):
        return Ledger(db)
    if _search_path(db):
        return Ledger(db)
    import asyncpg  # the PostgreSQL extra

    schema = "fluxhook_soak_" + uuid.uuid4().hex[:12]
    try:
        admin = await asyncpg.connect(db, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SystemExit(f"soak: cannot connect to {masked_url(db)}: {type(exc).__name__}: {exc}") from None
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await admin.close()
    return Ledger(_with_schema(db, schema), schema, db)


async def drop_ledger(ledger: Ledger) -> None:
    """Drop the schema the soak created (nothing else is ever dropped)."""
    if ledger.schema is None or ledger.admin_url is None:
        return
    import asyncpg

    admin = await asyncpg.connect(ledger.admin_url, timeout=10)
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{ledger.schema}" CASCADE')
    finally:
        await admin.close()


# -- the result store ------------------------------------------------------------------

#: Credentials moto accepts (it checks none); the soak's own S3 server only.
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "soak", "AWS_SECRET_ACCESS_KEY": "soak", "AWS_REGION": "us-east-1"}


@dataclass
class Bucket:
    """Where `--results s3://...` goes: the configured endpoint, or a moto server of the soak's own."""

    url: str
    endpoint: str
    env: dict[str, str]
    moto: Any = None

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        return urlsplit(self.url).path.strip("/")

    def open_uploads(self) -> int | None:
        """Multipart uploads left open under the prefix (moto's server only: it answers unsigned)."""
        if self.moto is None:
            return None
        response = httpx.get(f"{self.endpoint}/{self.bucket}?uploads", trust_env=False, timeout=10.0)
        if response.status_code != 200:
            return None
        keys = re.findall(r"<Key>([^<]*)</Key>", response.text)
        return sum(1 for key in keys if key.startswith(f"{self.prefix}/" if self.prefix else ""))

    def close(self) -> None:
        if self.moto is not None:
            self.moto.stop()
            self.moto = None


def open_bucket(url: str) -> Bucket:
    """FLUXHOOK_S3_ENDPOINT if set (with the AWS_* credentials already in the environment), else a moto
    S3 server started here on a free loopback port, with the bucket created. The variables the receivers
    need are also set in this process (the store reads its credentials and region from there)."""
    bucket = urlsplit(url).netloc
    if not bucket or urlsplit(url).scheme != "s3":
        raise SystemExit(f"soak: --results must be s3://bucket[/prefix], got {url!r}")
    configured = os.environ.get("FLUXHOOK_S3_ENDPOINT")
    if configured:
        return Bucket(url, configured, {"FLUXHOOK_RESULTS": url, "FLUXHOOK_S3_ENDPOINT": configured})
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        created = httpx.put(f"{endpoint}/{bucket}", trust_env=False, timeout=10.0)
    except BaseException:
        server.stop()
        raise
    if created.status_code != 200:
        server.stop()
        raise SystemExit(f"soak: moto did not create the bucket {bucket!r}: {created.status_code} {created.text[:200]}")
    os.environ.update(MOTO_ENV)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    return Bucket(url, endpoint, {"FLUXHOOK_RESULTS": url, "FLUXHOOK_S3_ENDPOINT": endpoint, **MOTO_ENV}, server)


# -- the run -----------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    jobs: int
    submitted: int
    stored: int
    failed_by_provider: int
    lost: int
    duplicates_stored: int
    forgeries_sent: int
    forgeries_accepted: int
    http_500: int
    polls: int
    rescued: int
    polls_per_rescued_job: float
    kills: int
    receiver_crashes: int
    #: None, "timeout" or "stalled".
    gave_up: str | None
    wall: float
    replicas: int
    #: "sqlite" or "postgresql".
    db: str
    #: "local" or "s3".
    results: str
    #: FLUXHOOK_RESULTS (a folder or s3://bucket/prefix) and, for S3, the endpoint.
    results_url: str
    s3_endpoint: str | None
    #: Multipart uploads left open in the bucket (a SIGKILL mid-upload leaves them; invisible, not
    #: counted as stored): known only for the soak's own moto server, else None.
    open_uploads: int | None
    #: FLUXHOOK_DB as it may be shown (password masked).
    ledger: str
    #: The forwarder's 502s for a replica while it was down (the sender retries), and at other times.
    refused_while_down: int
    refused_while_up: int
    callbacks_per_replica: dict[str, int]
    statuses: dict[str, int]
    #: Jobs per provider and per fault tag.
    mix: dict[str, int]
    callback_answers: dict[str, int]
    forgery_answers: dict[str, int]
    forgeries_by_kind: dict[str, int]
    forgeries_unanswered: int
    submit_errors: list[str]
    attacker_fetches: int
    simulator: dict[str, int]
    receiver_error_lines: list[str]
    lost_jobs: dict[str, str]
    duplicate_files: list[str]
    accepted_forgeries: list[str]
    workdir: str
    #: Series in the first receiver's /metrics at the end of the run (they should not grow with traffic).
    metrics_series: int | None = None

    @property
    def failed(self) -> bool:
        problems = (self.lost, self.duplicates_stored, self.forgeries_accepted, self.http_500, self.receiver_crashes)
        return any(problems) or self.gave_up is not None

    def summary(self) -> str:
        return (
            f"soak: jobs={self.submitted} stored={self.stored} failed_by_provider={self.failed_by_provider} "
            f"lost={self.lost} duplicates_stored={self.duplicates_stored} "
            f"forgeries_accepted={self.forgeries_accepted} http_500={self.http_500} "
            f"polls_per_rescued_job={self.polls_per_rescued_job:.1f} kills={self.kills} replicas={self.replicas}"
            f" db={self.db} results={self.results} wall={self.wall:.1f}s"
        )


def kill_points(kills: int, rng: random.Random) -> list[float]:
    """Fractions of finished jobs at which to kill: evenly spread, each jittered."""
    return [(k + 1 + rng.uniform(-0.3, 0.3)) / (kills + 1) for k in range(kills)]


def is_server_error(status: int) -> bool:
    return status >= 500 and status != 503  # 503 asks the sender to retry: part of the contract


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


@dataclass
class Downtime:
    """A receiver between its kill (or crash) and its restart, on the soak's monotonic clock."""

    replica: int
    since: float
    until: float = float("inf")


def refused_while_down(rr: RoundRobin | None, downtimes: list[Downtime]) -> tuple[int, int]:
    """The forwarder's own 502s: (while their replica was down, at any other time)."""
    if rr is None:
        return 0, 0
    ok = stray = 0
    for f in rr.log:
        if f.error is None:
            continue
        if any(d.replica == f.backend and f.ended >= d.since and f.started <= d.until for d in downtimes):
            ok += 1
        else:
            stray += 1
    return ok, stray


async def run(args: argparse.Namespace, workdir: Path) -> Report:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    ledger = await open_ledger(args.db, workdir)
    log(f"seed {seed}, {args.jobs} jobs, {args.kills} kills, {args.replicas} replica(s), workdir {workdir},"
        f" ledger {ledger.display}")
    try:
        report = await _run(args, workdir, seed, ledger)
    except BaseException:
        if ledger.schema:
            log(f"kept the schema {ledger.schema} in {masked_url(args.db)}")
        raise
    if ledger.schema:
        if args.workdir or report.failed:
            log(f"kept the schema {ledger.schema} in {masked_url(args.db)}")
        else:
            await drop_ledger(ledger)
    return report


async def _run(args: argparse.Namespace, workdir: Path, seed: int, ledger: Ledger) -> Report:
    bucket = open_bucket(args.results) if args.results else None
    if bucket is not None:
        log(f"results in {bucket.url} at {bucket.endpoint}{' (moto, started here)' if bucket.moto else ''}")
    try:
        return await _run_with(args, workdir, seed, ledger, bucket)
    finally:
        if bucket is not None:
            bucket.close()


async def _run_with(
    args: argparse.Namespace, workdir: Path, seed: int, ledger: Ledger, bucket: Bucket | None,
) -> Report:
    # One stream per role, so the plan, the targets and the kill points depend on the seed alone.
    rng = random.Random(seed)
    plans = [plan_job(i, rng) for i in range(args.jobs)]
    targets = sorted(rng.sample(range(args.jobs), max(1, round(ATTACK_SHARE * args.jobs))))
    points = kill_points(args.kills, rng)
    attacker_rng, killer_rng = random.Random(f"{seed}/attacker"), random.Random(f"{seed}/killer")

    # The simulator's webhook sender reports every answer it gets through this client; the
    # forwarder's own 502s (a replica down) are counted from its log instead.
    callback_answers: Counter[int] = Counter()

    async def count_answer(response: httpx.Response) -> None:
        if not is_forwarder_error(response):
            callback_answers[response.status_code] += 1

    sim_http = httpx.AsyncClient(timeout=30.0, trust_env=False, event_hooks={"response": [count_answer]})
    sim = Simulator(http=sim_http, callback_retries=(1.0, 3.0, 10.0))
    for plan in plans:
        sim.add_rule(plan.token, plan.faults)
    site = AttackerSite()
    downtimes: list[Downtime] = []
    rr: RoundRobin | None = None

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(sim_http.aclose)
        sim_url = await stack.enter_async_context(serve_in_background(sim.app))
        site_url = await stack.enter_async_context(serve_in_background(site.app))
        ports = []
        for _ in range(args.replicas):
            sock = bind()
            ports.append(sock.getsockname()[1])
            sock.close()
        if args.replicas == 1:
            public_url = f"http://127.0.0.1:{ports[0]}"
        else:  # every callback (and forgery) through the forwarder, to each replica in turn
            rr = RoundRobin([f"http://127.0.0.1:{port}" for port in ports])
            stack.push_async_callback(rr.aclose)
            public_url = await stack.enter_async_context(serve_in_background(rr.app))
        extra = dict(bucket.env) if bucket else {}
        if ledger.kind == "postgresql":  # every replica and this process share the server's connections
            extra["FLUXHOOK_DB_POOL"] = str(max(3, min(10, 80 // (args.replicas + 1))))
        env = environment(
            workdir, sim_url, public_url,
            FLUXHOOK_DB=ledger.db,
            FLUXHOOK_REPLICATE_URL=sim_url,
            # The simulator takes any key.
            DEERAPI_KEY="soak", COMETAPI_KEY="soak", REPLICATE_API_TOKEN="soak",  # noqa: S106
            FLUXHOOK_POLL_AFTER="2", FLUXHOOK_POLL_MAX_INTERVAL="2", FLUXHOOK_SWEEP_INTERVAL="0.5",
            FLUXHOOK_JOB_DEADLINE=str(int(args.timeout) + 600), FLUXHOOK_LEASE_SECONDS="3",
            **extra,
        )
        settings = Settings.from_env(env)
        if bucket is None:
            settings.results.mkdir(parents=True, exist_ok=True)
        receivers = [
            Receiver(port, env, workdir, "receiver" if args.replicas == 1 else f"receiver{i}", i)
            for i, port in enumerate(ports)
        ]
        for receiver in receivers:
            stack.push_async_callback(receiver.stop)
        await asyncio.gather(*(receiver.start() for receiver in receivers))
        rt = await stack.enter_async_context(Runtime.open(settings))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0, trust_env=False))
        attacker = Attacker(http, public_url, sim.replicate_secret, site_url)

        started = time.monotonic()
        job_ids: dict[int, str] = {}
        submit_errors: list[str] = []
        submitted = asyncio.Event()
        queue: asyncio.Queue[Plan] = asyncio.Queue()
        for plan in plans:
            queue.put_nowait(plan)

        async def submitter() -> None:
            while not queue.empty():
                plan = queue.get_nowait()
                try:
                    job = await submit(rt, plan.provider, plan.model, {"prompt": plan.prompt}, events=plan.events)
                except Exception as exc:  # the job may be in the ledger all the same: the audit decides
                    submit_errors.append(f"{plan.token} {type(exc).__name__}: {exc}")
                    continue
                job_ids[plan.index] = job.id

        async def submit_all() -> None:
            await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
            submitted.set()

        submitting = asyncio.create_task(submit_all())
        attack = asyncio.create_task(attacker.run(targets, job_ids, submitted, rt, attacker_rng))
        try:
            gave_up = await supervise(rt, receivers, args, points, killer_rng, submitting, attack, started,
                                      downtimes)
            wall = time.monotonic() - started
            if gave_up is None:  # the attacker has usually finished long before
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(attack), 30)
        finally:
            for task in (submitting, attack):
                task.cancel()
            await asyncio.gather(submitting, attack, return_exceptions=True)
        # Late duplicates and retries land while the receivers still run.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sim.drain(), 20)
        series = await metrics_series(receivers[0].port)
        await asyncio.gather(*(receiver.stop() for receiver in receivers))
        stats = sim.stats()
        found = await audit(rt, plans, stats["tasks"])
        open_uploads = bucket.open_uploads() if bucket else None
        totals = stats["totals"]

    tags = Counter(tag.partition("-")[0] if tag.startswith("busy") else tag for p in plans for tag in p.tags)
    lb_502, stray_502 = refused_while_down(rr, downtimes)
    server_errors = sum(n for status, n in (attacker.statuses + callback_answers).items() if is_server_error(status))
    return Report(
        seed=seed,
        jobs=args.jobs,
        submitted=found.submitted,
        stored=found.stored,
        failed_by_provider=found.failed_by_provider,
        lost=len(found.lost),
        duplicates_stored=len(found.duplicates),
        forgeries_sent=sum(attacker.statuses.values()),
        forgeries_accepted=len(attacker.accepted) + site.fetches,
        http_500=server_errors + stray_502,
        polls=totals["polls"],
        rescued=found.rescued,
        polls_per_rescued_job=totals["polls"] / found.rescued if found.rescued else 0.0,
        kills=sum(r.kills for r in receivers),
        receiver_crashes=sum(r.crashes for r in receivers),
        gave_up=gave_up,
        wall=round(wall, 2),
        replicas=args.replicas,
        db=ledger.kind,
        results="s3" if bucket else "local",
        results_url=bucket.url if bucket else str(workdir / "results"),
        s3_endpoint=bucket.endpoint if bucket else None,
        open_uploads=open_uploads,
        ledger=ledger.display,
        refused_while_down=lb_502,
        refused_while_up=stray_502,
        callbacks_per_replica={str(k): v for k, v in sorted(rr.per_backend().items())} if rr else {},
        statuses=dict(found.statuses),
        mix=dict(Counter(p.provider for p in plans) + tags),
        callback_answers={str(k): v for k, v in sorted(callback_answers.items())},
        forgery_answers={str(k): v for k, v in sorted(attacker.statuses.items())},
        forgeries_by_kind=dict(attacker.by_kind),
        forgeries_unanswered=attacker.unanswered,
        submit_errors=submit_errors,
        attacker_fetches=site.fetches,
        simulator=totals,
        receiver_error_lines=[line for r in receivers for line in r.error_lines()][:50],
        lost_jobs=found.lost,
        duplicate_files=found.duplicates,
        accepted_forgeries=attacker.accepted,
        workdir=str(workdir),
        metrics_series=series,
    )


async def metrics_series(port: int) -> int | None:
    """How many series the first receiver's /metrics holds at the end (None if it did not answer)."""
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/metrics")
        if answer.status_code == 200:
            return sum(1 for line in answer.text.splitlines() if line and not line.startswith("#"))
    return None


async def supervise(
    rt: Runtime, receivers: list[Receiver], args: argparse.Namespace, points: list[float], rng: random.Random,
    submitting: asyncio.Task[None], attack: asyncio.Task[None], started: float, downtimes: list[Downtime],
) -> str | None:
    """Watch the run until every job has finished, killing a receiver at `points` (a random one of
    several replicas); each kill's (or crash's) downtime goes to `downtimes`.

    Returns None, or why the run was given up: "timeout", or "stalled" when no job
    finished for `--stall` seconds (their deadlines lie beyond the run, so a stuck
    job would otherwise hold it until the timeout).
    """
    last_note = last_progress = started
    progress = (0, 0)
    many = len(receivers) > 1
    while True:
        counts = await rt.store.counts()
        recorded, finished = sum(counts.values()), sum(counts.get(str(s), 0) for s in TERMINAL)
        if submitting.done() and finished == recorded:
            return None
        if (recorded, finished) != progress:
            progress, last_progress = (recorded, finished), time.monotonic()
        for task in (submitting, attack):  # a bug in either stops the run
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error
        for receiver in receivers:
            if not receiver.alive():
                receiver.crashes += 1
                log(f"{receiver.name} exited by itself (status {receiver.returncode}); restarting it")
                down = Downtime(receiver.index, time.monotonic())
                downtimes.append(down)
                await receiver.start()
                down.until = time.monotonic()
        if points and finished >= points[0] * args.jobs:
            points.pop(0)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            victim = rng.choice(receivers) if many else receivers[0]
            down = Downtime(victim.index, time.monotonic())
            downtimes.append(down)
            await victim.kill()
            log(f"killed {'the receiver' if not many else victim.name} at {finished}/{args.jobs} finished jobs")
            await asyncio.sleep(rng.uniform(0.2, 1.0))  # callbacks meanwhile find nobody
            await victim.start()
            down.until = time.monotonic()
        now = time.monotonic()
        if now - started >= args.timeout:
            log(f"timed out after {args.timeout:.0f} s with {finished}/{args.jobs} jobs finished")
            return "timeout"
        if now - last_progress >= args.stall:
            log(f"stalled: no job finished in {args.stall:.0f} s, {finished}/{args.jobs} finished")
            return "stalled"
        if now - last_note >= 10:
            last_note = now
            log(f"{finished}/{args.jobs} finished, {recorded} recorded, {sum(r.kills for r in receivers)} kills")
        await asyncio.sleep(0.2)


def describe_problems(report: Report) -> None:
    """Details of whatever went wrong, on stderr (the summary alone goes to stdout)."""
    for error in report.submit_errors[:20]:
        log(f"submit raised: {error}")
    for job, why in list(report.lost_jobs.items())[:20]:
        log(f"lost {job}: {why}")
    for path in report.duplicate_files[:20]:
        log(f"duplicate or stray file: {path}")
    if report.open_uploads:  # not a failure: invisible, and what a SIGKILL mid-upload leaves (see s3.py)
        log(f"{report.open_uploads} multipart upload(s) left open under {report.results_url}")
    for forgery in report.accepted_forgeries[:20]:
        log(f"forgery accepted: {forgery}")
    if report.attacker_fetches:
        log(f"the receiver fetched {report.attacker_fetches} file(s) from the attacker's server")
    if report.http_500:
        log(f"5xx answers: callbacks {report.callback_answers}, forgeries {report.forgery_answers}")
    if report.refused_while_up:
        log(f"the forwarder could not reach a running replica {report.refused_while_up} time(s)")
    if report.receiver_crashes:
        log(f"a receiver exited by itself {report.receiver_crashes} time(s)")
    for line in report.receiver_error_lines[:20]:
        log(f"receiver log: {line}")


def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__, prog="python -m bench.soak")
    parser.add_argument("--jobs", type=int, default=1000, help="how many jobs to run (default 1000)")
    parser.add_argument("--seed", type=int, help="seed of the fault plan, attack targets and kill points")
    parser.add_argument("--kills", type=int, default=2, help="how often to SIGKILL a receiver (default 2)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")
    parser.add_argument("--stall", type=float, default=60.0,
                        help="give up when no job has finished for this many seconds (default 60)")
    parser.add_argument("--workdir", help="keep the database, results and receiver logs here")
    parser.add_argument("--db", metavar="URL",
                        help="the ledger: a SQLite path, or postgresql://... (a schema of the soak's own is made"
                             " there and dropped afterwards, unless the URL names one with ?search_path=);"
                             " default: a SQLite file in the work folder")
    parser.add_argument("--replicas", type=int, default=1,
                        help="receiver processes, behind a round-robin forwarder when more than 1 (default 1)")
    parser.add_argument("--results", metavar="s3://BUCKET/PREFIX",
                        help="keep result files in S3: at FLUXHOOK_S3_ENDPOINT if set, else in a moto S3 server"
                             " the soak starts on loopback (default: a folder in the work folder)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON instead of one line")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.kills < 0 or args.timeout <= 0 or args.stall <= 0 or args.replicas < 1:
        parser.error("--jobs and --replicas must be >= 1, --kills >= 0, --timeout and --stall > 0")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fluxhook-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = asyncio.run(run(args, workdir))
    except SystemExit:  # e.g. the database did not answer: nothing ran
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    describe_problems(report)
    if not args.workdir:
        if report.failed:
            log(f"kept {workdir} for inspection")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"summary": report.summary(), "failed": report.failed, **asdict(report)}, indent=2))
    else:
        print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

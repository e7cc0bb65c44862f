"""Result downloads: 32 concurrent 20 MiB results from a local server, receiver against curl.

    python -m bench.downloads            # 32 x 20 MiB, 3 runs of each side
    python -m bench.downloads tiny       # 4 x 1 MiB, 1 run: a seconds-long smoke run

Question: how fast does a real `fluxhook serve` process fetch results when 32
callbacks report them at once, compared with the raw capacity of the machine
(curl fetching the same files in parallel), and does its memory stay bounded
(streamed to disk, never a whole file in memory)?

Setup: distinct valid PNG files (a 16x16 image plus a large ancillary padding
chunk, `submitter.simulator.png_image`) in a temporary folder, served by nginx
(sendfile, one worker, access log off; a generated config on a free loopback
port, run as a non-daemon child process) or, if nginx is not installed, by
`python -m http.server` (much slower; the note says so), as `image/png`.

- Baseline: one `curl` per file, all started together, each writing its file to
  disk; MiB/s = total bytes / wall time from the first start to the last exit.
- Baseline: bare httpx, the library the receiver downloads with, on its own (with
  httpx's default transport; the receiver's download client has its own,
  receiver/fetch/transport.py): a Python subprocess on the receiver's event loop
  (uvloop if installed) with one `httpx.AsyncClient`, streaming every file at once with `aiter_bytes()` into a
  file (a plain write per chunk: no hashing, checks, fsync or rename). It starts,
  imports and connects nothing until told to go, so, like the receiver, it is
  measured from the go to the last file written: its own CPU time from /proc,
  its VmRSS sampled the same way, idle RSS 1 s after start-up.
- Subject: a real receiver subprocess (`python -m receiver.cli serve`) with a fresh
  SQLite ledger in which every job was already `submitted` with a provider task id
  (written before the receiver starts). One signed BFL `Ready` callback per job
  is POSTed, all at once; the time runs from the first callback sent until the
  ledger shows every job `stored` (read every 50 ms). The receiver's VmRSS is
  sampled every 20 ms from /proc; its peak is compared with its idle RSS after
  start-up, and VmHWM is read at the end. Every stored file's sha256 (on disk and
  as recorded) must equal the source file's.

Runs alternate curl, bare httpx and receiver, with a fresh output folder, ledger and receiver
process per run and `sync` before each; the figures are medians. The receiver
also fsyncs each file and its folder (curl does not) and records each file in
the ledger: that is part of what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._cli import main
from bench._setup import MASTER, environment
from receiver.config.settings import Settings
from receiver.engine.jobs import callback_url
from receiver.store import Job
from receiver.store.sqlite import SQLiteStore
from submitter.signing import sign_bfl
from submitter.simulator import png_image
from submitter.status import TERMINAL, Status

PROJECT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
CONCURRENCY = 32
SIZES: dict[str, dict[str, int]] = {
    # run_timeout bounds one curl or receiver run; budget bounds the whole benchmark.
    "full": {"files": 32, "bytes": 20 * MIB, "runs": 3, "run_timeout": 180, "budget": 1200},
    "tiny": {"files": 4, "bytes": 1 * MIB, "runs": 1, "run_timeout": 30, "budget": 120},
}
HZ = os.sysconf("SC_CLK_TCK")
NGINX_CONF = """worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {work}/tmp/body;
  proxy_temp_path {work}/tmp/proxy;
  fastcgi_temp_path {work}/tmp/fastcgi;
  uwsgi_temp_path {work}/tmp/uwsgi;
  scgi_temp_path {work}/tmp/scgi;
  types {{ image/png png; }}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


# -- processes --------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if this benchmark dies, so nothing outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], *, log: Path | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child (from the main thread: the death signal follows the thread that forked)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # closed below
    try:
        return subprocess.Popen(  # noqa: S603 - fixed argument lists
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=_die_with_parent, **kwargs
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(x) for x in f.read().split()]
    return found


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL to it and the children it had (by pid) if it does not exit in time."""
    if proc.poll() is not None:
        return
    children = _children(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    total = 0.0
    for p in [pid, *(_children(pid) if tree else [])]:
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / HZ
    return total


def proc_kib(pid: int, field: str) -> int | None:
    """VmRSS / VmHWM of a process in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def steal_seconds() -> float:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / HZ


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all but idle and iowait), steal included."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / HZ


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every `interval` seconds; `peak_kib` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            value = proc_kib(self.pid, "VmRSS")
            if value is not None:
                self.peak_kib = max(self.peak_kib, value)
                self.samples += 1
            self._done.wait(self.interval)

    def finish(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool_version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]


# -- the files and their server ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str
    size: int
    sha256: str


def make_sources(root: Path, count: int, size: int) -> list[Source]:
    root.mkdir(mode=0o755)
    sources = []
    for i in range(count):
        data = png_image(f"bench-download-{i}", size)
        name = f"file-{i}.png"
        (root / name).write_bytes(data)
        sources.append(Source(name, len(data), hashlib.sha256(data).hexdigest()))
    return sources


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


class StaticServer:
    """nginx (if installed) or python -m http.server, on a free loopback port, as a child process."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.nginx = shutil.which("nginx")
        self.kind = tool_version([self.nginx, "-v"]) if self.nginx else "python -m http.server (nginx not installed)"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        self.work.mkdir(mode=0o755)
        log = self.work / "server.log"
        if self.nginx:
            (self.work / "tmp").mkdir()
            conf = self.work / "nginx.conf"
            conf.write_text(NGINX_CONF.format(work=self.work, port=self.port, root=self.root))
            self.proc = spawn([self.nginx, "-p", str(self.work), "-e", str(self.work / "error.log"), "-c", str(conf)],
                              log=log)
        else:
            self.proc = spawn([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                               "--directory", str(self.root)], log=log)

    async def wait_ready(self, probe: str, within: float = 15.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"static server exited ({self.proc.returncode}): {self.log_tail()}")
                try:
                    response = await http.head(self.url(probe))
                    if response.status_code == 200:
                        if not response.headers.get("content-type", "").startswith("image/png"):
                            raise RuntimeError(f"static server sends {response.headers.get('content-type')!r}")
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"static server not ready after {within} s: {self.log_tail()}")
                await asyncio.sleep(0.05)

    def log_tail(self) -> str:
        texts = []
        for name in ("server.log", "error.log"):
            with contextlib.suppress(OSError):
                texts.append((self.work / name).read_text(errors="replace")[-500:])
        return " | ".join(t.strip() for t in texts if t.strip()) or "(no log)"

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid, tree=True) if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


# -- baseline: curl ---------------------------------------------------------------------------


def _start_curls(
    server: StaticServer, sources: list[Source], out: Path, timeout: float
) -> list[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for source in sources:
            procs.append(spawn(["curl", "-sS", "--fail", "--max-time", str(int(timeout)), "-o",
                                str(out / source.name), server.url(source.name)]))
    except BaseException:
        for proc in procs:
            stop(proc)
        raise
    return procs


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [proc.wait(max(0.1, deadline - time.monotonic())) for proc in procs]


def _verify_copies(folder: Path, sources: list[Source]) -> None:
    for source in sources:
        path = folder / source.name
        if path.stat().st_size != source.size or sha256_file(path) != source.sha256:
            raise RuntimeError(f"{path.name} differs from {source.name}")


async def curl_run(server: StaticServer, sources: list[Source], work: Path, within: float) -> dict[str, float]:
    out = work / "curl"
    out.mkdir()
    try:
        await asyncio.to_thread(os.sync)
        before, steal0, server0 = resource.getrusage(resource.RUSAGE_CHILDREN), steal_seconds(), server.cpu()
        busy0 = busy_seconds()
        started = time.perf_counter()
        procs = _start_curls(server, sources, out, within)
        try:
            codes = await asyncio.to_thread(_wait_all, procs, within + 5)
        finally:
            for proc in procs:
                stop(proc, 2)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = busy_seconds() - busy0
        if any(codes):
            raise RuntimeError(f"curl exit codes {codes}")
        await asyncio.to_thread(_verify_copies, out, sources)
        total = sum(s.size for s in sources)
        return {
            "seconds": elapsed,
            "mib_per_s": total / MIB / elapsed,
            "cpu_s_per_gib": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (total / 2**30),
            "server_cpu_s": server.cpu() - server0,
            "steal_s": steal_seconds() - steal0,
            "machine_busy_cores": busy / elapsed,
        }
    finally:
        await asyncio.to_thread(shutil.rmtree, out, True)


# -- baseline: bare httpx ---------------------------------------------------------------------

BARE_HTTPX = r"""
import asyncio, sys
import httpx
urls, out = sys.argv[1].split(","), sys.argv[2]
loop = sys.argv[3]


async def fetch(http, url, path):
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        with open(path, "wb") as f:
            async for chunk in response.aiter_bytes():
                f.write(chunk)


async def main():
    limits = httpx.Limits(max_connections=len(urls), max_keepalive_connections=0)
    async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(30.0, connect=10.0), limits=limits) as http:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await asyncio.gather(*(fetch(http, url, f"{out}/{url.rsplit('/', 1)[1]}") for url in urls))
        print("done", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # measured before it exits


if loop == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def event_loop() -> str:
    """The loop the receiver runs on (uvicorn's loop=auto): uvloop if installed."""
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _spawn_bare(urls: list[str], out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - fixed argument list
        [sys.executable, "-c", BARE_HTTPX, ",".join(urls), str(out), event_loop()], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )


async def bare_httpx_run(server: StaticServer, sources: list[Source], work: Path, within: float) -> dict[str, float]:
    out = work / "bare-httpx"
    out.mkdir()
    proc = _spawn_bare([server.url(source.name) for source in sources], out)
    assert proc.stdin is not None and proc.stdout is not None
    sampler: RssSampler | None = None

    async def line(expect: str, within: float) -> None:
        got = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), within)  # type: ignore[union-attr]
        if got.strip() != expect.encode():
            raise RuntimeError(f"bare httpx said {got!r} (exit {proc.poll()}), expected {expect!r}")

    try:
        await line("ready", 30)
        await asyncio.to_thread(os.sync)
        await asyncio.sleep(1.0)  # idle after start-up, as the receiver
        idle_kib = proc_kib(proc.pid, "VmRSS") or 0
        sampler = RssSampler(proc.pid)
        sampler.start()
        cpu0, steal0, server0, busy0 = cpu_seconds(proc.pid), steal_seconds(), server.cpu(), busy_seconds()
        started = time.perf_counter()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        await line("done", within)
        elapsed = time.perf_counter() - started
        sampler.finish()
        cpu = cpu_seconds(proc.pid) - cpu0
        hwm_kib = proc_kib(proc.pid, "VmHWM") or 0
        server_cpu, steal, busy = server.cpu() - server0, steal_seconds() - steal0, busy_seconds() - busy0
        with contextlib.suppress(OSError):
            proc.stdin.close()
        await asyncio.to_thread(proc.wait, 10)
        await asyncio.to_thread(_verify_copies, out, sources)
        total = sum(s.size for s in sources)
        return {
            "seconds": elapsed,
            "mib_per_s": total / MIB / elapsed,
            "idle_rss_mib": idle_kib / 1024,
            "peak_rss_mib": sampler.peak_kib / 1024,
            "vmhwm_mib": hwm_kib / 1024,
            "cpu_s_per_gib": cpu / (total / 2**30),
            "server_cpu_s": server_cpu,
            "steal_s": steal,
            "machine_busy_cores": busy / elapsed,
        }
    finally:
        if sampler is not None:
            sampler.finish()
        stop(proc, 5)
        await asyncio.to_thread(shutil.rmtree, out, True)


# -- subject: the receiver --------------------------------------------------------------------


def _statuses(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    finally:
        conn.close()


def _errors(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [f"{r[0]}: {r[1]} ({r[2]})" for r in conn.execute(
            "SELECT id, status, error FROM jobs WHERE status != 'stored' LIMIT 5")]
    finally:
        conn.close()


def _verify_stored(db: Path, results: Path, expected: dict[str, Source], s3_base: str | None = None) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT job_id, path, size, sha256 FROM files").fetchall()
    finally:
        conn.close()
    if sorted(r[0] for r in rows) != sorted(expected):
        raise RuntimeError(f"{len(rows)} file records for {len(expected)} jobs")
    for job_id, path, size, sha in rows:
        source = expected[job_id]
        if path is None or size != source.size or sha != source.sha256:
            raise RuntimeError(f"job {job_id}: recorded {size} bytes, sha256 {sha}; source {source.sha256}")
        if s3_base is not None:
            _verify_object(_signed(s3_base, path), source)
        elif sha256_file(results / path) != source.sha256:
            raise RuntimeError(f"job {job_id}: stored file {path} differs from {source.name}")


def _signed(s3_base: str, path: str) -> str:
    """A presigned GET for `path` under `{endpoint}/{bucket}/{prefix}` (moto refuses unsigned reads)."""
    import datetime as dt

    import obstore
    from obstore.store import S3Store

    endpoint, bucket, prefix = s3_base.rsplit("/", 2)
    store = S3Store(bucket, endpoint=endpoint, region="us-east-1", access_key_id="bench", secret_access_key="bench",  # noqa: S106 - moto takes any
                    virtual_hosted_style_request=False, client_options={"allow_http": True})
    return obstore.sign(store, "GET", f"{prefix}/{path}", dt.timedelta(minutes=10))


def _verify_object(url: str, source: Source) -> None:
    """The object's bytes and its recorded metadata (x-amz-meta-sha256, Content-Type) against the source."""
    digest = hashlib.sha256()
    with httpx.stream("GET", url, trust_env=False, timeout=60) as response:
        response.raise_for_status()
        meta, kind = response.headers.get("x-amz-meta-sha256"), response.headers.get("content-type")
        for block in response.iter_bytes(MIB):
            digest.update(block)
    if digest.hexdigest() != source.sha256 or meta != source.sha256 or kind != "image/png":
        raise RuntimeError(f"object {url}: sha256 {digest.hexdigest()}, metadata {meta}, type {kind}; "
                           f"source {source.sha256}")


S3_BUCKET = "fluxhook-bench"


class MotoServer:
    """moto's S3 server (in-memory, Python/werkzeug) in its own process on a free loopback port."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = work / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                          log=self.log)
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.put(f"{self.endpoint}/{S3_BUCKET}")).status_code == 200:
                        return
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {_tail(self.log)}")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


async def receiver_run(
    server: StaticServer, sources: list[Source], work: Path, index: int, within: float, s3: bool = False
) -> dict[str, float]:
    folder = work / f"receiver-{index}{'-s3' if s3 else ''}"
    folder.mkdir()
    moto = MotoServer(folder) if s3 else None
    try:
        if moto is not None:
            await moto.start()
        return await _receiver_run(server, sources, folder, index, within, moto.endpoint if moto else None)
    finally:
        if moto is not None:
            moto.stop()
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def _receiver_run(
    server: StaticServer, sources: list[Source], folder: Path, index: int, within: float, s3: str | None = None
) -> dict[str, float]:
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    env = environment(
        folder, "http://127.0.0.1:9", public_url,  # the provider API is never called: callbacks carry the results
        FLUXHOOK_DOWNLOAD_HOSTS="127.0.0.1", FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE="1", FLUXHOOK_DOWNLOAD_ALLOW_HTTP="1",
        FLUXHOOK_DOWNLOAD_CONCURRENCY=str(CONCURRENCY),
        FLUXHOOK_MAX_DOWNLOAD_BYTES=str(2 * max(s.size for s in sources) + MIB),
        FLUXHOOK_DRAIN_TIMEOUT="2",  # stopping it (after the measurement, or on error) should not take 20 s
        **({"FLUXHOOK_RESULTS": f"s3://{S3_BUCKET}/run-{index}", "FLUXHOOK_S3_ENDPOINT": s3,
            "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
           if s3 else {}),
    )
    settings = Settings.from_env(env)
    db, results = Path(settings.db), settings.results
    # The ledger first, before the receiver starts: every job submitted, with its provider task id.
    store = SQLiteStore(settings.db)
    await store.open()
    callbacks: list[tuple[str, bytes, str]] = []
    expected: dict[str, Source] = {}
    try:
        now = time.time()
        for i, source in enumerate(sources):
            job = Job(id=f"fh_dl{index:02d}{i:04d}", provider="bfl", model="flux-dev", params={"prompt": f"dl {i}"},
                      status=Status.QUEUED, created_at=now, deadline_at=now + 3600)
            task = f"bench-dl-task-{index}-{i}"
            await store.create_job(job)
            await store.record_submit(job.id, task, None, now=now, next_check_at=now + 3600)
            url, secret = callback_url(public_url, MASTER.encode(), "bfl", job.id)
            body = json.dumps({"id": task, "status": "Ready", "result": {"sample": server.url(source.name)}}).encode()
            callbacks.append((url, body, sign_bfl(secret, body)))
            expected[job.id] = source
    finally:
        await store.close()
    await asyncio.to_thread(os.sync)
    proc = spawn([sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning"],
                 log=folder / "receiver.log", env={**os.environ, **env}, cwd=PROJECT)
    sampler: RssSampler | None = None
    try:
        await _wait_healthy(public_url, proc, folder, 30)
        await asyncio.sleep(1.0)  # idle after start-up
        idle_kib = proc_kib(proc.pid, "VmRSS") or 0
        sampler = RssSampler(proc.pid)
        sampler.start()
        cpu0, steal0, server0, busy0 = cpu_seconds(proc.pid), steal_seconds(), server.cpu(), busy_seconds()
        started = time.perf_counter()
        limits = httpx.Limits(max_connections=len(callbacks), max_keepalive_connections=len(callbacks))
        async with httpx.AsyncClient(trust_env=False, timeout=30, limits=limits) as http:
            answers = await asyncio.gather(*(
                http.post(url, content=body, headers={"content-type": "application/json", "x-bfl-signature": sig})
                for url, body, sig in callbacks
            ))
        rejected = [a.status_code for a in answers if a.status_code != 200]
        if rejected:
            raise RuntimeError(f"callbacks answered {rejected}")
        callbacks_s = time.perf_counter() - started
        deadline = started + within
        while True:
            counts = await asyncio.to_thread(_statuses, db)
            if counts.get(Status.STORED.value, 0) == len(sources):
                break
            if any(counts.get(s.value, 0) for s in TERMINAL if s != Status.STORED):
                raise RuntimeError(f"jobs ended unstored: {await asyncio.to_thread(_errors, db)}")
            if proc.poll() is not None:
                raise RuntimeError(f"receiver exited ({proc.returncode}): {_tail(folder / 'receiver.log')}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"not all stored after {within} s: {counts}")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        sampler.finish()
        cpu = cpu_seconds(proc.pid) - cpu0
        hwm_kib = proc_kib(proc.pid, "VmHWM") or 0
        server_cpu, steal, busy = server.cpu() - server0, steal_seconds() - steal0, busy_seconds() - busy0
    finally:
        if sampler is not None:
            sampler.finish()
        stop(proc)
    await asyncio.to_thread(_verify_stored, db, results, expected, f"{s3}/{S3_BUCKET}/run-{index}" if s3 else None)
    total = sum(s.size for s in sources)
    return {
        "seconds": elapsed,
        "callbacks_answered_s": callbacks_s,
        "mib_per_s": total / MIB / elapsed,
        "idle_rss_mib": idle_kib / 1024,
        "peak_rss_mib": sampler.peak_kib / 1024,
        "rss_samples": sampler.samples,
        "vmhwm_mib": hwm_kib / 1024,
        "cpu_s_per_gib": cpu / (total / 2**30),
        "server_cpu_s": server_cpu,
        "steal_s": steal,
        "machine_busy_cores": busy / elapsed,
    }


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-800:].strip() or "(empty log)"
    except OSError:
        return "(no log)"


async def _wait_healthy(public_url: str, proc: subprocess.Popen[bytes], folder: Path, within: float) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(trust_env=False, timeout=2) as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"receiver exited ({proc.returncode}): {_tail(folder / 'receiver.log')}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{public_url}/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver not healthy after {within} s: {_tail(folder / 'receiver.log')}")
            await asyncio.sleep(0.05)


# -- the benchmark ----------------------------------------------------------------------------


def _target(met: bool, target: str) -> str:
    return f"{target} (target {'met' if met else 'missed'})"


def _row(metric: str, value: float, unit: str, baseline: float | None, note: str) -> dict[str, Any]:
    return {"metric": metric, "value": round(value, 2), "unit": unit,
            "baseline": None if baseline is None else round(baseline, 2),
            "ratio": round(value / baseline, 3) if baseline else None, "note": note}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


async def _measure(size: str, work: Path) -> dict[str, Any]:
    config = SIZES[size]
    count, file_bytes, runs, run_timeout = config["files"], config["bytes"], config["runs"], config["run_timeout"]
    os.chmod(work, 0o755)  # noqa: S103 - nginx's worker runs as another user: it must reach the files
    sources = await asyncio.to_thread(make_sources, work / "static", count, file_bytes)
    server = StaticServer(work / "static", work / "server")
    server.start()
    curl: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    receiver: list[dict[str, float]] = []
    s3: list[dict[str, float]] = []
    with_s3 = importlib.util.find_spec("moto") is not None and importlib.util.find_spec("obstore") is not None
    try:
        await server.wait_ready(sources[0].name)
        for index in range(runs):  # alternate: baselines, subject, baselines, subject, ...
            curl.append(await curl_run(server, sources, work, run_timeout))
            bare.append(await bare_httpx_run(server, sources, work, run_timeout))
            receiver.append(await receiver_run(server, sources, work, index, run_timeout))
            if with_s3:
                s3.append(await receiver_run(server, sources, work, index, run_timeout, s3=True))
    finally:
        server.stop()
    total_mib = sum(s.size for s in sources) / MIB
    each_mib = sources[0].size / MIB
    fallback = "" if server.nginx else (
        " NOTE: nginx not installed, served by python -m http.server, which caps both sides;")
    peak, idle = _median(receiver, "peak_rss_mib"), _median(receiver, "idle_rss_mib")
    growth = peak - idle
    per_download = growth / min(count, CONCURRENCY)
    if total_mib < 64:
        verdict = "too little in flight to judge (smoke size)"
    elif growth >= 0.5 * total_mib:
        verdict = "NOT bounded: about as much as the bytes in flight (whole-file buffering?)"
    elif per_download > 1:
        verdict = (f"bounded, not whole files, but {per_download:.1f} MiB per concurrent download"
                   f" ({per_download / each_mib:.0%} of a file): read-ahead buffered per connection")
    else:
        verdict = "bounded (streaming)"
    loop = event_loop()
    runs_of = {"receiver": receiver, "bare httpx": bare, "curl": curl}

    def listed(key: str, digits: int = 1) -> str:
        return "; ".join(f"{name} {[round(r[key], digits) for r in found]}" for name, found in runs_of.items()
                         if all(key in r for r in found))

    speed, bare_speed, curl_speed = (_median(r, "mib_per_s") for r in (receiver, bare, curl))
    cpu, bare_cpu, curl_cpu = (_median(r, "cpu_s_per_gib") for r in (receiver, bare, curl))
    bare_peak = _median(bare, "peak_rss_mib")
    receiver_does = ("hashes (sha256), checks size and type, writes through a temp file, fsyncs it and its folder,"
                     " renames it and records it in the ledger")
    rows = [
        _row(f"download throughput, {count} concurrent x {each_mib:.0f} MiB, vs bare httpx", speed, "MiB/s",
             bare_speed,
             f"{_target(speed >= 0.8 * bare_speed, 'target >= 0.8')}; receiver subprocess, first callback sent to all"
             f" {count} jobs stored (ledger read every 50 ms),"
             f" FLUXHOOK_DOWNLOAD_CONCURRENCY={CONCURRENCY}; the receiver {receiver_does}; baseline: bare httpx"
             f" ({loop}, one AsyncClient, {count} aiter_bytes() streams written to files, nothing else) in its own"
             f" subprocess, go to last file written; median of {runs}, alternating; runs MiB/s {listed('mib_per_s')};"
             f" all sha256 verified;{fallback} server: {server.kind}"),
        _row(f"download throughput, {count} concurrent x {each_mib:.0f} MiB, vs curl", speed, "MiB/s", curl_speed,
             f"{_target(speed >= 0.5 * curl_speed, 'target >= 0.5')}; the receiver runs above; baseline:"
             f" {count} curl processes started together, to disk (the machine's"
             f" raw capacity); bare httpx against curl: {bare_speed / curl_speed:.3f}"),
        _row("client CPU per GiB downloaded, vs curl", cpu, "CPU-s/GiB", curl_cpu,
             f"{_target(cpu <= 2 * curl_cpu, 'target <= 2')}; the receiver process's user+sys CPU during the run"
             " against the curl processes' total;"
             f" runs {listed('cpu_s_per_gib', 2)}; wall s {listed('seconds', 2)};"
             f" {nproc()} cores shared by server, client and the bench"),
        _row("client CPU per GiB downloaded, vs bare httpx", cpu, "CPU-s/GiB", bare_cpu,
             f"as above, against the bare httpx process's own CPU; bare httpx against curl: {bare_cpu / curl_cpu:.3f}"),
        _row("receiver peak RSS during downloads", peak, "MiB", idle,
             f"{_target(peak < 150, 'target < 150 MiB')}; VmRSS sampled every 20 ms from the first callback to"
             f" the last job stored; baseline: the same"
             f" process idle 1 s after start-up; growth {growth:.1f} MiB with {total_mib:.0f} MiB in flight:"
             f" {verdict}; VmHWM at end (lifetime peak) {[round(r['vmhwm_mib'], 1) for r in receiver]} MiB;"
             f" runs peak {[round(r['peak_rss_mib'], 1) for r in receiver]},"
             f" idle {[round(r['idle_rss_mib'], 1) for r in receiver]}"),
        _row("receiver peak RSS during downloads, vs bare httpx", peak, "MiB", bare_peak,
             f"baseline: the bare httpx process's VmRSS sampled the same way (idle"
             f" {_median(bare, 'idle_rss_mib'):.1f} MiB before go); runs peak {listed('peak_rss_mib')}"),
        _row("result file size", each_mib, "MiB", None,
             f"{count} distinct valid PNGs (16x16 image + ancillary padding chunk, png_image), {sources[0].size:,}"
             f" bytes each, {total_mib:.0f} MiB per run, Content-Type image/png; the receiver streams each to a temp"
             " file, fsyncs it and its folder, renames it and records size and sha256 in the ledger"),
    ]
    if s3:
        rows += [
            _row(f"download throughput into S3 (moto, loopback), {count} x {each_mib:.0f} MiB",
                 _median(s3, "mib_per_s"), "MiB/s", _median(receiver, "mib_per_s"),
                 "the same receiver run with FLUXHOOK_RESULTS=s3://bucket/run-N on moto's S3 server (Python,"
                 " in-memory, one process on loopback); baseline: the local-folder receiver above; each file streams"
                 " into a 5 MiB-part multipart upload at a staging key, then a server-side CopyObject puts it at"
                 " its final key with its sha256 and Content-Type metadata; every object's bytes and metadata"
                 " verified; runs"
                 f" {[round(r['mib_per_s'], 1) for r in s3]}; moto's own speed bounds this figure"),
            _row("receiver peak RSS during downloads into S3", _median(s3, "peak_rss_mib"), "MiB",
                 _median(s3, "idle_rss_mib"),
                 f"as above, S3 runs; growth {_median(s3, 'peak_rss_mib') - _median(s3, 'idle_rss_mib'):.1f} MiB"
                 f" with {total_mib:.0f} MiB in flight; runs {[round(r['peak_rss_mib'], 1) for r in s3]}"),
        ]
    return {
        "name": "downloads",
        "rows": rows,
        "environment": {
            "size": size,
            "python": platform.python_version(),
            "nproc": nproc(),
            "server": server.kind,
            "curl": tool_version(["curl", "--version"]),
            "files": count,
            "file_bytes": sources[0].size,
            "receiver": "python -m receiver.cli serve (1 uvicorn process, SQLite WAL synchronous=FULL)",
            "receiver_event_loop": "uvloop (uvicorn loop=auto, uvloop installed)" if loop == "uvloop" else "asyncio",
            "bare_httpx_event_loop": loop,
            "receiver_env": {"FLUXHOOK_DOWNLOAD_CONCURRENCY": CONCURRENCY, "FLUXHOOK_DOWNLOAD_HOSTS": "127.0.0.1",
                             "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE": 1, "FLUXHOOK_DOWNLOAD_ALLOW_HTTP": 1},
            "runs_receiver": [{k: round(v, 3) for k, v in r.items()} for r in receiver],
            "runs_curl": [{k: round(v, 3) for k, v in r.items()} for r in curl],
            "runs_bare_httpx": [{k: round(v, 3) for k, v in r.items()} for r in bare],
            "runs_receiver_s3": [{k: round(v, 3) for k, v in r.items()} for r in s3],
        },
    }


def nproc() -> int:
    return os.cpu_count() or 0


async def run(size: str = "full") -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    work = Path(tempfile.mkdtemp(prefix="fluxhook-bench-dl-"))
    try:
        async with asyncio.timeout(SIZES[size]["budget"]):
            return await _measure(size, work)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


if __name__ == "__main__":
    main(run)

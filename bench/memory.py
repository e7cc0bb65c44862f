"""Receiver memory under load: its RSS after 100,000 callbacks and 10,000 stored jobs against its RSS
after the first 1,000 callbacks, in the same process. Target: within 1.2x (no growth with ledger size).

    python -m bench.memory          # 10,000 jobs: 1,000 callbacks, then on to 100,000 (every job stored)
    python -m bench.memory tiny     # 500 jobs: 200 callbacks, then on to 5,000 (every job stored)

The receiver is a real `fluxhook serve` process (one uvicorn worker) on a SQLite ledger pre-filled
with the run's jobs, all submitted BFL jobs (the project's migrations, then a bulk insert). Every job
gets the same number of signed callbacks on its own hook URL (receiver.engine.jobs.callback_url): progress
callbacks, each with a progress value of its own, so each is authenticated, recorded as a new event
and applied; and last a `Ready` callback whose result URL points at a local file server (a small PNG,
`submitter.simulator.png_image`): the receiver downloads it and the job ends `stored`. Jobs go a group
at a time (100; 20 at the tiny size), one callback to each in turn, so callbacks sent together are for different jobs.
The callbacks are sent over 16 keep-alive connections by a minimal HTTP/1.1 client in this process.

The baseline is the receiver's VmRSS (/proc/PID/status) once the first callbacks (whole jobs, so
downloads are warm too) are answered, their jobs stored and the process idle for a moment; the
subject is its VmRSS after all the rest, read the same way. RssAnon and RssFile (SQLite's file pages
are not counted as the process's memory unless mapped), the lifetime peak VmHWM, and VmRSS after
each tenth of the rest (read under load, to tell steady growth from a plateau) are noted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench._cli import main
from bench._setup import MASTER, environment, free_port
from receiver.engine.jobs import callback_url
from receiver.store.sqlite import SQLiteStore
from submitter.signing import sign_bfl
from submitter.simulator import png_image

SIZES: dict[str, dict[str, int]] = {
    "full": {"jobs": 10_000, "warm": 1_000, "callbacks": 100_000, "budget": 900},
    "tiny": {"jobs": 500, "warm": 200, "callbacks": 5_000, "budget": 120},
}
TARGET = 1.2
CONNECTIONS = 16
#: How long the receiver is left idle before each reading (its downloads and sinks settle).
SETTLE = 1.0
#: The rest of the callbacks go in this many parts, VmRSS read after each: growth or a plateau.
TENTHS = 10
MIB = 1024 * 1024
COLUMNS = ("id", "provider", "model", "params", "status", "created_at", "deadline_at", "provider_job_id",
           "submitted_at", "updated_at", "next_check_at")


def job_id(i: int) -> str:
    return f"fh_memory{i:06d}"


async def fill(db: Path, jobs: int, now: float) -> None:
    """The schema (the store's migrations), then `jobs` submitted jobs in one transaction, none due."""
    store = SQLiteStore(str(db))
    await store.open()
    await store.close()
    await asyncio.to_thread(_insert, db, jobs, now)


def _insert(db: Path, jobs: int, now: float) -> None:
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            ((job_id(i), "bfl", "flux-dev", json.dumps({"prompt": f"memory {i}"}), "submitted", now, now + 86400,
              f"task-{i}", now, now, now + 86400) for i in range(jobs)),
        )
        conn.execute("COMMIT")


def requests(public_url: str, results_url: str, jobs: int, per_job: int, group_size: int) -> Iterator[bytes]:
    """Every callback of the run as raw HTTP/1.1 requests, in sending order: for each group of jobs,
    round after round one callback to each; the last round's is the job's `Ready` with its result URL."""
    hooks = [callback_url(public_url, MASTER.encode(), "bfl", job_id(i)) for i in range(jobs)]
    for start in range(0, jobs, group_size):
        group = range(start, min(start + group_size, jobs))
        for r in range(per_job):
            for i in group:
                if r < per_job - 1:
                    body = {"task_id": f"task-{i}", "status": "Pending", "progress": 10 * r + 1}
                else:
                    body = {"id": f"task-{i}", "status": "Ready",
                            "result": {"sample": f"{results_url}/result.png?job={i}"}}
                url, secret = hooks[i]
                raw = json.dumps(body, separators=(",", ":")).encode()
                yield (
                    f"POST {url.removeprefix(public_url)} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                    f"content-type: application/json\r\nx-bfl-signature: {sign_bfl(secret, raw)}\r\n"
                    f"content-length: {len(raw)}\r\n\r\n"
                ).encode() + raw


async def send(port: int, batch: list[bytes]) -> Counter[int]:
    """Send `batch` over CONNECTIONS keep-alive connections; the answers' status codes. A request whose
    connection closed under it is sent again on a new one (callbacks are deduplicated: safe)."""
    statuses: Counter[int] = Counter()
    queue = iter(batch)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in queue:
                for _attempt in range(5):
                    try:
                        writer.write(request)
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0]
                        await reader.readexactly(int(length or 0))
                        statuses[int(head.split(b" ")[1])] += 1
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        writer.close()
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                else:
                    statuses[0] += 1  # never answered
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return statuses


def all_answered(statuses: Counter[int], tmp: Path) -> None:
    """Every callback answered 2xx, or a RuntimeError with the receiver's last words (no waiting on
    jobs a refused callback will never store)."""
    if any(not 200 <= code < 300 for code in statuses):
        tail = (tmp / "receiver.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"callbacks not all answered 2xx: {dict(statuses)}; the receiver's log ends:\n{tail}")


def status_of(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of `pid`, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def counts(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return {**{status: n for status, n in rows}, "events": events}


async def until_stored(db: Path, stored: int, deadline: float, proc: subprocess.Popen[bytes]) -> dict[str, int]:
    """Wait for `stored` jobs stored (no job left succeeded: downloads done), then SETTLE seconds."""
    while True:
        now = await asyncio.to_thread(counts, db)
        if now.get("stored", 0) >= stored and not now.get("succeeded"):
            break
        if proc.poll() is not None:
            raise RuntimeError(f"the receiver exited ({proc.returncode}) with {now}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"time budget spent waiting for {stored} stored jobs: {now}")
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE)
    return now


async def measure(size: str, tmp: Path) -> dict[str, Any]:
    config = SIZES[size]
    jobs, warm, total = config["jobs"], config["warm"], config["callbacks"]
    per_job = total // jobs
    # Jobs take their callbacks a group at a time; the first batch is the first group, its jobs all stored.
    group = warm // per_job
    deadline = time.monotonic() + config["budget"]
    files = tmp / "files"
    files.mkdir()
    (files / "result.png").write_bytes(png_image("memory"))
    files_port, port = free_port(), free_port()
    public_url, results_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{files_port}"
    env = environment(tmp, results_url, public_url)
    db = Path(env["FLUXHOOK_DB"])
    await fill(db, jobs, time.time())
    batch = list(requests(public_url, results_url, jobs, per_job, group))
    log = (tmp / "receiver.log").open("wb")
    file_server = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter; started before timing
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(files), str(files_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    receiver = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter; started before timing
        [sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env}, stdout=log, stderr=log,
    )
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            for url in (f"{public_url}/healthz", f"{results_url}/result.png"):
                while True:
                    try:
                        if (await http.get(url, timeout=1)).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or receiver.poll() is not None:
                        tail = (tmp / "receiver.log").read_text()[-2000:]
                        raise RuntimeError(f"{url} did not answer; the receiver's log ends: {tail}")
                    await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE)
        started = status_of(receiver.pid)
        trajectory: list[float] = []
        t0 = time.perf_counter()
        statuses = await send(port, batch[:warm])
        warm_s = time.perf_counter() - t0
        all_answered(statuses, tmp)
        warm_ledger = await until_stored(db, group, deadline, receiver)
        baseline = status_of(receiver.pid)
        t0 = time.perf_counter()
        rest = batch[warm:]
        step = -(-len(rest) // TENTHS)
        for start in range(0, len(rest), step):  # in tenths, VmRSS read after each (under load)
            statuses += await send(port, rest[start:start + step])
            trajectory.append(status_of(receiver.pid)["VmRSS"])
        rest_s = time.perf_counter() - t0
        all_answered(statuses, tmp)
        final_ledger = await until_stored(db, jobs, deadline, receiver)
        subject = status_of(receiver.pid)
    finally:
        for proc in (receiver, file_server):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    ratio = subject["VmRSS"] / baseline["VmRSS"]
    answered = sum(n for code, n in statuses.items() if 200 <= code < 300)
    verdict = "target met" if ratio <= TARGET else "target MISSED"
    return {
        "name": "memory",
        "rows": [
            {"metric": f"receiver RSS after {total:,} callbacks, {final_ledger.get('stored', 0):,} jobs stored",
             "value": round(subject["VmRSS"], 1), "unit": "MiB", "baseline": round(baseline["VmRSS"], 1),
             "ratio": round(ratio, 3),
             "note": (f"target <= {TARGET} ({verdict}); baseline: the same process after its first {warm:,} callbacks"
                      f" ({warm_ledger.get('stored', 0):,} jobs stored); VmRSS read {SETTLE:g} s after the last"
                      f" job was stored; RssAnon {baseline['RssAnon']:.1f} -> {subject['RssAnon']:.1f} MiB,"
                      f" RssFile {baseline['RssFile']:.1f} -> {subject['RssFile']:.1f} MiB;"
                      f" VmHWM {subject['VmHWM']:.1f} MiB; at start-up (idle) {started['VmRSS']:.1f} MiB;"
                      f" VmRSS after each tenth of the rest (under load): {[round(v, 1) for v in trajectory]},"
                      f" of which {trajectory[-1] - trajectory[len(trajectory) // 2 - 1]:.1f} MiB over the last half")},
            {"metric": "callbacks answered 2xx", "value": answered, "unit": "callbacks", "baseline": total,
             "ratio": round(answered / total, 3),
             "note": (f"statuses {dict(sorted(statuses.items()))}; ledger: {final_ledger}; sent in {warm_s:.1f} s +"
                      f" {rest_s:.1f} s over {CONNECTIONS} connections ({(total - warm) / rest_s:,.0f}/s after the"
                      " first batch)")},
        ],
        "environment": {"jobs": jobs, "callbacks": total, "warm_callbacks": warm, "callbacks_per_job": per_job,
                        "group": group,
                        "connections": CONNECTIONS, "ledger": "sqlite", "file": "16x16 PNG from python -m http.server",
                        "rss_mib": {"start": started, "after_warm": baseline, "after_all": subject,
                                    "after_each_tenth": trajectory}},
    }


async def run(size: str = "full") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fluxhook-memory-") as tmp:
        return await measure(size, Path(tmp))


if __name__ == "__main__":
    main(run)

"""Callback ingest: verified, deduplicated, durably recorded callbacks per second through a real
receiver (one uvicorn worker), against bare Starlette on the same uvicorn settings.

The receiver is `fluxhook serve`, so it runs with its connection limits (receiver/server.py's
guarded httptools protocol). The baseline is bare Starlette under plain uvicorn, as it always was,
so the ratio includes what the guard costs; a third server, bare Starlette under the guarded
protocol, measures that cost alone (row "guarded protocol").

Each request is a unique BFL progress callback for one of 2,000 ledger jobs, so every one is
authenticated (HKDF path token), parsed, recorded as a new event and applied to its job, and
committed with synchronous=FULL before the 2xx. Servers are pinned to CPU 0 and wrk to CPU 1
where `taskset` exists; baseline and subject alternate, and the median of the rounds is reported.

    python -m bench.ingest            # 3 rounds of 10 s at 16 and 64 connections
    python -m bench.ingest --tiny     # 1 round of 1 s (smoke run)
    FLUXHOOK_BENCH_NO_PIN=1 python -m bench.ingest   # let the OS place server threads and wrk
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench._cli import main
from bench._setup import MASTER, environment, free_port
from receiver.jobs import callback_url
from receiver.settings import Settings
from receiver.store import Job
from receiver.store.sqlite import SQLiteStore
from submitter.status import Status

JOBS = 2000
HERE = Path(__file__).parent


def _pin(cpu: int) -> list[str]:
    if os.environ.get("FLUXHOOK_BENCH_NO_PIN") or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(cpu)]


async def prepare(tmp: Path, public_url: str) -> tuple[dict[str, str], Path]:
    """A ledger of submitted jobs and the file of their hook paths."""
    # No provider is called and nothing is polled or downloaded: only the callback path is measured.
    env = environment(tmp, "http://127.0.0.1:9", public_url, FLUXHOOK_POLL_AFTER="86400",
                      FLUXHOOK_SWEEP_INTERVAL="3600")
    settings = Settings.from_env(env)
    store = SQLiteStore(settings.db)
    await store.open()
    now = time.time()
    lines = []
    for i in range(JOBS):
        job = Job(id=f"fh_ingest{i:06d}", provider="bfl", model="flux-dev", params={}, status=Status.QUEUED,
                  created_at=now, deadline_at=now + 86400)
        await store.create_job(job)
        await store.record_submit(job.id, f"task-{i}", None, now=now, next_check_at=now + 86400)
        url, _ = callback_url(public_url, MASTER.encode(), "bfl", job.id)
        lines.append(f"{url.removeprefix(public_url)}\ttask-{i}")
    await store.close()
    paths = tmp / "paths.tsv"
    paths.write_text("\n".join(lines) + "\n")
    return env, paths


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        _pin(0) + command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"server did not start: {command}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * _UNIT[unit]


def wrk(port: int, connections: int, seconds: float, paths: Path) -> dict[str, float]:
    command = [
        *_pin(1), "wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
        "-s", str(HERE / "ingest.lua"), f"http://127.0.0.1:{port}", "--", str(paths),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout  # noqa: S603
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    failed = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": float(errors.group(1)) if errors else 0.0,
            "socket_errors": 1.0 if failed else 0.0}


def measure(rounds: int, seconds: float, connections: tuple[int, ...]) -> dict[str, object]:
    if not shutil.which("wrk"):
        skipped = "wrk not installed (Debian: apt-get install wrk)"
        return {"name": "callback ingest", "rows": [], "environment": {"skipped": skipped}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        env, paths = asyncio.run(prepare(tmp, f"http://127.0.0.1:{port}"))
        subject = [sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning"]
        baseline = [sys.executable, "-m", "uvicorn", "bench.bare:app", "--port", str(port),
                    "--no-access-log", "--log-level", "warning"]
        guarded = [*baseline, "--http", "receiver.server:GuardedHttpToolsProtocol"]
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(rounds):
            for c in connections:
                for name, command in (("bare", baseline), ("guarded", guarded), ("fluxhook", subject)):
                    with server(command, env, port):
                        wrk(port, c, min(seconds, 2.0), paths)  # warm-up, discarded
                        runs.setdefault((name, c), []).append(wrk(port, c, seconds, paths))
        store_rows = _count_events(Path(env["FLUXHOOK_DB"]))
    rows = []
    for c in connections:
        bare_rps = statistics.median(r["rps"] for r in runs[("bare", c)])
        ours = runs[("fluxhook", c)]
        ours_rps = statistics.median(r["rps"] for r in ours)
        rows += [
            {"metric": f"callbacks/s @{c} conns", "value": round(ours_rps), "unit": "req/s",
             "baseline": round(bare_rps), "ratio": round(ours_rps / bare_rps, 3),
             "note": f"target >= 0.5; runs {[round(r['rps']) for r in ours]}"},
            {"metric": f"p50 to 2xx @{c} conns", "value": statistics.median(r["p50_ms"] for r in ours), "unit": "ms",
             "baseline": statistics.median(r["p50_ms"] for r in runs[("bare", c)]), "ratio": None, "note": ""},
            {"metric": f"p99 to 2xx @{c} conns", "value": statistics.median(r["p99_ms"] for r in ours), "unit": "ms",
             "baseline": statistics.median(r["p99_ms"] for r in runs[("bare", c)]), "ratio": None,
             "note": "target < 25 ms" if c == 64 else ""},
        ]
        guarded_rps = statistics.median(r["rps"] for r in runs[("guarded", c)])
        rows.append({"metric": f"guarded protocol @{c} conns", "value": round(guarded_rps), "unit": "req/s",
                     "baseline": round(bare_rps), "ratio": round(guarded_rps / bare_rps, 3),
                     "note": "bare Starlette, receiver/server.py's protocol vs plain uvicorn; "
                             f"runs {[round(r['rps']) for r in runs[('guarded', c)]]}"})
        if any(r["non_2xx"] for r in ours):
            rows.append({"metric": f"non-2xx @{c}", "value": sum(r["non_2xx"] for r in ours), "unit": "responses",
                         "baseline": None, "ratio": None, "note": "should be 0"})
    for row in rows:
        if row["ratio"] is None and row["baseline"]:
            row["ratio"] = round(row["value"] / row["baseline"], 2)
    return {"name": "callback ingest", "rows": rows,
            "environment": {"rounds": rounds, "seconds": seconds, "events_recorded": store_rows,
                            "pinned": bool(_pin(0)), "load": "wrk -t2, unique progress callbacks",
                            "servers": "fluxhook serve (guarded protocol); baseline: bare Starlette, plain uvicorn"}}


def _count_events(db: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


async def run(size: str = "full") -> dict[str, object]:
    if size == "tiny":
        return await asyncio.to_thread(measure, 1, 1.0, (16,))
    return await asyncio.to_thread(measure, 3, 10.0, (16, 64))


if __name__ == "__main__":
    main(run)

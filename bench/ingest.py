"""Callback ingest: verified, deduplicated, durably recorded callbacks per second through a real
receiver, against bare Starlette on the same uvicorn settings, all in one run.

The receiver is `fluxhook serve`, so it runs with its connection limits (receiver/serve/server.py's
guarded httptools protocol). The baseline is bare Starlette under plain uvicorn, as it always was,
so the ratio includes what the guard costs; a third server, bare Starlette under the guarded
protocol, measures that cost alone (row "guarded protocol"). The receiver is measured on SQLite
(synchronous=FULL, one process) and on PostgreSQL (the server's synchronous_commit, on by default):
one `fluxhook serve`, and 3 replicas on one schema sharing the port with SO_REUSEPORT (bench/ingest_pg.py).

Every server run gets a fresh ledger of 2,000 submitted jobs (a SQLite file, or a PostgreSQL schema
dropped afterwards) and every request is a unique BFL progress callback for one of them (the measured
run's hook list is the warm-up's rotated by one, so no body repeats), so each one is authenticated
(HKDF path token), parsed, recorded as a new event and applied to its job, and committed before the
2xx; the ledger is counted afterwards to check that every 2xx was recorded.

Pinning (where `taskset` exists): wrk on CPU 1; single-process servers on CPU 0; the 3 replicas
unpinned, so the OS spreads them over both CPUs as a deployment would (replicas are there to use
more cores), and, as a control, the same 3 replicas all on CPU 0, the one core a single receiver
gets; PostgreSQL is an existing server and is never pinned. Configurations alternate, the median of
the rounds is reported, and where the CPU went during each measured run (ingest_pg.CpuMeter).

    python -m bench.ingest            # 3 rounds of 10 s at 16 and 64 connections (about 8 minutes)
    python -m bench.ingest --tiny     # 1 round of 1 s (smoke run)
    FLUXHOOK_BENCH_NO_PIN=1 python -m bench.ingest   # let the OS place every server and wrk
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import ingest_pg
from bench._cli import main
from bench._setup import MASTER, environment, free_port
from receiver.engine.jobs import callback_url
from receiver.store import Job, open_store
from submitter.status import Status

JOBS = 2000
REPLICAS = 3
HERE = Path(__file__).parent


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    ledger: str | None  # "sqlite", "postgres", or None: bare Starlette keeps none
    command: tuple[str, ...] = ()  # empty: REPLICAS replicas of bench/ingest_pg.py
    cpu: int | None = 0  # the CPU its server processes are pinned to; None: wherever the OS puts them


def _pin(cpu: int | None) -> list[str]:
    if (cpu is None or os.environ.get("FLUXHOOK_BENCH_NO_PIN") or not shutil.which("taskset")
            or (os.cpu_count() or 1) < 2):
        return []
    return ["taskset", "-c", str(cpu)]


def hook_lists(tmp: Path, public_url: str) -> tuple[Path, Path]:
    """The hook paths of the ledger's jobs, for the warm-up and (rotated by one) for the measured run."""
    lines = []
    for i in range(JOBS):
        url, _ = callback_url(public_url, MASTER.encode(), "bfl", f"fh_ingest{i:06d}")
        lines.append(f"{url.removeprefix(public_url)}\ttask-{i}")
    # ingest.lua sends callback n to hook n mod JOBS with progress n: rotated, no (job, body) recurs.
    warm, measured = tmp / "warm-up.tsv", tmp / "paths.tsv"
    warm.write_text("\n".join(lines) + "\n")
    measured.write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    return warm, measured


async def fill(db: str) -> None:
    """A ledger of JOBS submitted jobs, written through the store (ten at a time)."""
    store = open_store(db)
    await store.open()
    now, slots = time.time(), asyncio.Semaphore(10)

    async def submitted(i: int) -> None:
        async with slots:
            job = Job(id=f"fh_ingest{i:06d}", provider="bfl", model="flux-dev", params={}, status=Status.QUEUED,
                      created_at=now, deadline_at=now + 86400)
            await store.create_job(job)
            await store.record_submit(job.id, f"task-{i}", None, now=now, next_check_at=now + 86400)

    try:
        await asyncio.gather(*(submitted(i) for i in range(JOBS)))
    finally:
        await store.close()


@contextlib.contextmanager
def ledger(kind: str | None, tmp: Path) -> Iterator[str | None]:
    """A fresh, filled ledger for one server run (FLUXHOOK_DB), removed afterwards."""
    if kind is None:
        yield None
    elif kind == "sqlite":
        path = tmp / f"ledger-{uuid.uuid4().hex[:8]}.db"
        asyncio.run(fill(str(path)))
        try:
            yield str(path)
        finally:
            for leftover in tmp.glob(f"{path.name}*"):
                leftover.unlink()
    else:
        with ingest_pg.schema() as url:
            asyncio.run(fill(url))
            yield url


def count_events(db: str) -> int:
    if db.startswith("postgresql://"):
        return ingest_pg.count_events(db)
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], port: int) -> Iterator[list[int]]:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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
        yield [process.pid]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serving(config: Config, env: dict[str, str], port: int) -> contextlib.AbstractContextManager[list[int]]:
    if config.command:
        return server([*_pin(config.cpu), *config.command], env, port)
    return ingest_pg.replicas(REPLICAS, env, port, _pin(config.cpu))


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
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    failed = re.search(r"Socket errors:(.*)", out)
    non_2xx = int(errors.group(1)) if errors else 0
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "answered_2xx": requests - non_2xx, "non_2xx": non_2xx,
            "socket_errors": sum(map(int, re.findall(r"\d+", failed.group(1)))) if failed else 0}


def run_once(config: Config, env: dict[str, str], port: int, c: int, seconds: float,
             paths: tuple[Path, Path], tmp: Path) -> dict[str, Any]:
    """One server run on a fresh ledger: a warm-up (discarded), then the measured run with its CPU split."""
    with ledger(config.ledger, tmp) as db:
        with serving(config, {**env, "FLUXHOOK_DB": db or env["FLUXHOOK_DB"]}, port) as pids:
            warm = wrk(port, c, min(seconds, 2.0), paths[0])
            meter = ingest_pg.CpuMeter(pids)
            measured = wrk(port, c, seconds, paths[1])
            result: dict[str, Any] = {**measured, "cpu": meter.stop(), "cpu_each": meter.each}
        if db:
            # Servers stopped: the 2xx of both runs must all be there; a few more were in flight when wrk stopped.
            result["events"] = count_events(db)
            result["unrecorded_2xx"] = max(0, warm["answered_2xx"] + result["answered_2xx"] - result["events"])
    return result


def configurations(port: int) -> tuple[Config, ...]:
    subject = (sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning")
    baseline = (sys.executable, "-m", "uvicorn", "bench.bare:app", "--port", str(port),
                "--no-access-log", "--log-level", "warning")
    return (
        Config("bare", "bare Starlette", None, baseline),
        Config("guarded", "guarded protocol", None,
               (*baseline, "--http", "receiver.serve.server:GuardedHttpToolsProtocol")),
        Config("sqlite", "SQLite receiver", "sqlite", subject),
        Config("pg1", "PostgreSQL, 1 receiver", "postgres", subject),
        Config("pg3", f"PostgreSQL, {REPLICAS} replicas", "postgres", cpu=None),
        # The control: the same replicas held to the one core a single receiver gets.
        Config("pg3cpu0", f"PostgreSQL, {REPLICAS} replicas on CPU 0", "postgres", cpu=0),
    )


def _how(config: Config) -> str:
    if not config.command:
        return f"{REPLICAS} x bench/ingest_pg.py (fluxhook serve's app) on one SO_REUSEPORT port"
    if "receiver.cli" in config.command:
        return "fluxhook serve"
    guarded = " --http receiver.serve.server:GuardedHttpToolsProtocol"
    return "uvicorn bench.bare:app" + (guarded if "--http" in config.command else "")


def measure(rounds: int, seconds: float, connections: tuple[int, ...]) -> dict[str, object]:
    if not shutil.which("wrk"):
        skipped = "wrk not installed (Debian: apt-get install wrk)"
        return {"name": "callback ingest", "rows": [], "environment": {"skipped": skipped}}
    postgres = ingest_pg.server_info()  # fails clearly, before anything starts, if PostgreSQL is missing
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        public_url = f"http://127.0.0.1:{port}"
        # No provider is called and nothing is polled or downloaded: only the callback path is measured.
        env = environment(tmp, "http://127.0.0.1:9", public_url, FLUXHOOK_POLL_AFTER="86400",
                          FLUXHOOK_SWEEP_INTERVAL="3600")
        paths = hook_lists(tmp, public_url)
        configs = configurations(port)
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _ in range(rounds):
            for c in connections:
                for config in configs:
                    runs.setdefault((config.name, c), []).append(run_once(config, env, port, c, seconds, paths, tmp))
    servers = {c.name: f"{_how(c)}, " + (f"CPU {c.cpu}" if _pin(c.cpu) else "not pinned") for c in configs}
    return {"name": "callback ingest", "rows": [row for c in connections for row in report(configs, runs, c)],
            "environment": {"rounds": rounds, "seconds": seconds, "jobs": JOBS, "pinned": bool(_pin(0)),
                            "load": "wrk -t2 (CPU 1), a unique progress callback per request",
                            "servers": servers, "postgres": postgres,
                            "runs": {f"{name}@{c}": value for (name, c), value in runs.items()}}}


def _row(metric: str, value: float, unit: str, baseline: float | None, note: str = "") -> dict[str, Any]:
    ratio = round(value / baseline, 3) if baseline else None
    return {"metric": metric, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio, "note": note}


def report(configs: tuple[Config, ...], runs: dict[tuple[str, int], list[dict[str, Any]]], c: int) -> list[dict]:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[(name, c)])

    def each(name: str) -> list[int]:
        return [round(r["rps"]) for r in runs[(name, c)]]

    label = {config.name: config.label for config in configs}
    bare, sqlite = med("bare", "rps"), med("sqlite", "rps")
    rows = [
        _row(f"callbacks/s @{c} conns", round(sqlite), "req/s", round(bare), f"target >= 0.5; runs {each('sqlite')}"),
        _row(f"p50 to 2xx @{c} conns", med("sqlite", "p50_ms"), "ms", med("bare", "p50_ms")),
        _row(f"p99 to 2xx @{c} conns", med("sqlite", "p99_ms"), "ms", med("bare", "p99_ms"),
             "target < 25 ms" if c == 64 else ""),
        _row(f"guarded protocol @{c} conns", round(med("guarded", "rps")), "req/s", round(bare),
             f"bare Starlette, receiver/serve/server.py's protocol vs plain uvicorn; runs {each('guarded')}"),
    ]
    # PostgreSQL: the baseline is the SQLite receiver of the same run; bare Starlette in the note.
    for name in ("pg1", "pg3", "pg3cpu0"):
        rps = med(name, "rps")
        more = f"vs 1 receiver {rps / med('pg1', 'rps'):.2f}; " if name != "pg1" else ""
        rows += [
            _row(f"{label[name]}: callbacks/s @{c} conns", round(rps), "req/s", round(sqlite),
                 ("issue target >= 1.5; " if name == "pg3" else "") + f"vs bare Starlette {rps / bare:.3f}; "
                 f"{more}runs {each(name)}"),
            _row(f"{label[name]}: p99 to 2xx @{c} conns", med(name, "p99_ms"), "ms", med("sqlite", "p99_ms"),
                 f"p50 {med(name, 'p50_ms'):.2f} ms; bare Starlette p99 {med('bare', 'p99_ms'):.2f} ms"),
        ]
    for config in configs:
        results = runs[(config.name, c)]
        if config.ledger:  # where the CPU went: the run of median throughput
            middle = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
            busy = round(sum(v for k, v in middle["cpu"].items() if k not in ("idle", "steal")), 2)
            spread = f"; per replica {middle['cpu_each']}" if len(middle["cpu_each"]) > 1 else ""
            rows.append(_row(f"CPU split, {config.label} @{c} conns", busy, f"of {os.cpu_count()} cores busy", None,
                             ingest_pg.describe(middle["cpu"], middle["rps"]) + spread))
        bad = {key: sum(r.get(key, 0) for r in results) for key in ("non_2xx", "socket_errors", "unrecorded_2xx")}
        if any(bad.values()):
            rows.append(_row(f"errors, {config.label} @{c} conns", sum(bad.values()), "", None, f"should be 0: {bad}"))
    return rows


async def run(size: str = "full") -> dict[str, object]:
    if size == "tiny":
        return await asyncio.to_thread(measure, 1, 1.0, (16,))
    return await asyncio.to_thread(measure, 3, 10.0, (16, 64))


if __name__ == "__main__":
    main(run)

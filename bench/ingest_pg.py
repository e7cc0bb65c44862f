"""The PostgreSQL side of bench/ingest.py: the server check, a schema per ledger, receiver replicas on
one port, and where the CPU goes during a measured run.

The server is FLUXHOOK_BENCH_PG, else FLUXHOOK_TEST_PG, else the local one (trust auth, database `test`),
as for bench/sweep_cost_pg.py. A server that does not answer is an error, never a skip. Every ledger
lives in a schema of its own, dropped on the way out (also on failure or Ctrl-C).

Replicas: wrk talks to one address, so N receivers share one port with SO_REUSEPORT and the kernel
spreads wrk's connections over them (by a hash of each connection's addresses: uneven for a few
connections, as it would be in a deployment that does this). `fluxhook serve` binds its own socket, so
each replica is this module run as a program: the app, settings and limits of `fluxhook serve`
(receiver.serve.server.uvicorn_config), served on a socket bound with SO_REUSEPORT first.

    python -m bench.ingest_pg PORT     # one replica (FLUXHOOK_* environment as for fluxhook serve)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

from bench import _cli
from bench.sweep_cost_pg import PG_URL, connect, with_schema

#: Set on the receivers' database connections, so their backends can be told from anyone else's.
APP_NAME = "fluxhook-bench-ingest"
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


async def _admin(sql: str, *args: Any, fetch: bool = False) -> Any:
    conn = await connect(who="the ingest benchmark measures the receiver on PostgreSQL too")
    try:
        return await conn.fetch(sql, *args) if fetch else await conn.execute(sql, *args)
    finally:
        await conn.close()


def server_info() -> dict[str, str]:
    """The settings that shape commit cost; fails clearly, before anything starts, if the server is missing."""
    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "commit_delay",
             "max_connections", "shared_buffers")
    rows = asyncio.run(_admin("SELECT name, current_setting(name) AS setting FROM pg_settings WHERE name = ANY($1)",
                              list(names), fetch=True))
    return {row["name"]: row["setting"] for row in rows}


@contextlib.contextmanager
def schema() -> Iterator[str]:
    """A new schema; yields the receivers' FLUXHOOK_DB for it, and drops it (with its ledger) afterwards."""
    name = f"fh_bench_ingest_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE SCHEMA "{name}"'))
    try:
        yield with_schema(PG_URL, name) + f"&application_name={APP_NAME}"
    finally:
        asyncio.run(_admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


def count_events(url: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return int(await conn.fetchval("SELECT COUNT(*) FROM events"))
        finally:
            await conn.close()

    return asyncio.run(count())


# -- replicas -----------------------------------------------------------------------------------------

READY = "ready"


def serve_replica(port: int) -> None:
    """`fluxhook serve` (receiver/cli/serve.py's serve) on a SO_REUSEPORT socket; prints READY once it accepts."""
    from receiver.config.settings import Settings
    from receiver.serve.server import uvicorn_config
    from receiver.web.app import create_app

    settings = Settings.from_env()
    settings.require_public()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))

    class Replica(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            print(READY, flush=True)

    server = Replica(uvicorn_config(create_app(settings), settings, log_level="warning"))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)


@contextlib.contextmanager
def replicas(count: int, env: dict[str, str], port: int, pin: list[str]) -> Iterator[list[int]]:
    """`count` replicas sharing `port`, each prefixed with `pin` (taskset or nothing); yields their pids
    once every one accepts connections, and stops them all afterwards."""
    command = [*pin, sys.executable, "-m", "bench.ingest_pg", str(port)]
    processes: list[subprocess.Popen[str]] = []
    try:
        with selectors.DefaultSelector() as waiting:
            for _ in range(count):
                process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                    command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
                )
                processes.append(process)
                waiting.register(process.stdout, selectors.EVENT_READ, process)  # type: ignore[arg-type]
            deadline = time.monotonic() + 30
            while waiting.get_map():
                events = waiting.select(max(0.0, deadline - time.monotonic()))
                if not events:
                    raise RuntimeError(f"{len(waiting.get_map())} of {count} replicas did not start: {command}")
                for key, _ in events:
                    if key.fileobj.readline().strip() != READY:  # type: ignore[union-attr]
                        raise RuntimeError(f"a replica exited during start-up: {command}")
                    waiting.unregister(key.fileobj)
        yield [p.pid for p in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()


# -- where the CPU goes ----------------------------------------------------------------------------------


def _ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


def _machine() -> tuple[int, int, int]:
    """(busy, idle + iowait, steal) clock ticks over all CPUs since boot."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq, idle + iowait, steal


class CpuMeter:
    """CPU time spent while wrk ran, split between the receivers, PostgreSQL and wrk, in cores
    (CPU-seconds per second of wall time; the machine has os.cpu_count() of them).

    postgres: the receivers' own backends (application_name APP_NAME); postgres bg: the postmaster, WAL
    writer, checkpointer and other background processes; other: everything else on the machine (other
    clients of the same server included), found as the machine's busy time minus the rest; wrk: from
    the rusage of this process's reaped children, so wrk must be the only child reaped meanwhile.
    `each`: the cores each receiver used, in order (how evenly SO_REUSEPORT spread the connections)."""

    def __init__(self, receivers: list[int]) -> None:
        self.receivers = receivers
        self.each: list[float] = []
        self.started = time.monotonic()
        self.machine = _machine()
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.procs = {pid: _ticks(pid) or 0 for pid in [*receivers, *_postgres_pids()]}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        after = {pid: _ticks(pid) for pid in [*self.receivers, *_postgres_pids()]}
        busy, idle, steal = (b - a for a, b in zip(self.machine, _machine(), strict=True))
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk = children.ru_utime + children.ru_stime - self.children.ru_utime - self.children.ru_stime
        rows = asyncio.run(_admin("SELECT pid, application_name FROM pg_stat_activity"
                                  " WHERE backend_type = 'client backend'", fetch=True))
        clients = {row["pid"]: row["application_name"] == APP_NAME for row in rows}

        def used(pids: list[int]) -> float:
            return sum(max(0, (after.get(p) or 0) - self.procs.get(p, 0)) for p in pids) / TICK / wall

        self.each = [round(used([pid]), 2) for pid in self.receivers]
        postgres = [p for p in after if p not in self.receivers]
        split = {
            "receivers": used(self.receivers),
            "postgres": used([p for p in postgres if clients.get(p)]),
            "postgres bg": used([p for p in postgres if p not in clients]),
            "wrk": wrk / wall,
        }
        split["other"] = max(0.0, busy / TICK / wall - sum(split.values()))
        split["idle"] = idle / TICK / wall
        split["steal"] = steal / TICK / wall
        return {name: round(value, 2) for name, value in split.items()}


def describe(split: dict[str, float], rps: float) -> str:
    """The split for a note; receivers and postgres also as CPU time per callback."""
    def part(name: str, value: float) -> str:
        per = f" ({value / rps * 1e6:.0f} us/callback)" if name in ("receivers", "postgres") and rps else ""
        return f"{name} {value:.2f}{per}"

    return ", ".join(part(name, value) for name, value in split.items() if value or name == "idle")


if __name__ == "__main__":
    _parser = _cli.parser(__doc__, prog="python -m bench.ingest_pg")
    _parser.add_argument("port", type=int, metavar="PORT", help="the loopback port every replica shares")
    serve_replica(_parser.parse_args().port)

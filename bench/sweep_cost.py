"""Cost of one sweep pass against the size of the ledger, on SQLite and on PostgreSQL.

    python -m bench.sweep_cost            # 1,000,000-job ledger against a 1,000-job one, per backend
    python -m bench.sweep_cost tiny       # 10,000 against 1,000: a seconds-long smoke run

Question: does one pass of `receiver.engine.sweep.sweep_once` cost the same whether the
ledger holds a thousand jobs or a million, when none or 100 of them are due? It
must, since `serve` runs a pass every few seconds: the claim has to find due jobs
through the `jobs_due` index on the next-check time, never by scanning the table.

Per backend, two ledgers get the project's schema (a store opened once runs the
migrations) and a bulk load (SQLite: `executemany` in large transactions;
PostgreSQL: COPY into a schema of its own, then VACUUM (ANALYZE)): mostly terminal
`stored` jobs (no next-check time), 1 % unfinished jobs whose next check is in the
future, and 100 `submitted` jobs with a provider task id whose next check is in
the past ("100 due") or the future ("0 due"). The subject is the large ledger; the
baseline, a 1,000-job ledger with the same 100 jobs, is measured in the same run,
alternating with the subject, so the ratio shows whether the cost grows.

Each pass runs on a `Runtime` built directly (as tests/harness.py does) with the
real store (`open_store`: SQLiteStore, WAL, synchronous=FULL; PostgresStore, an
asyncpg pool) and a provider API on `httpx.MockTransport` answering every status
check at once with `Pending`, so only the receiver's own work is timed. Before each
pass the 100 jobs are reset (`submitted`, no lease, next check past or future).
One untimed warm-up pass per ledger runs first: a running receiver's steady state.

The plans are those of the statements the store runs, taken from
receiver/store/sql/leases.py (`claim_due` as the sweep calls it: the checks claim and the
downloads claim): SQLite's EXPLAIN QUERY PLAN; PostgreSQL's EXPLAIN (ANALYZE,
BUFFERS), rolled back, with the generic plan the plan cache could switch to and
how the store's own connections did plan them. As a control the same statements
are timed on the large ledger with the index ruled out (SQLite: `NOT INDEXED`;
PostgreSQL: index and bitmap scans off). PostgreSQL is required: a server that
does not answer fails the benchmark (bench/sweep_cost_pg.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import sweep_cost_pg as pg
from bench._cli import main
from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.engine.sweep import sweep_once
from receiver.store import open_store, sql
from receiver.store.sql import Query
from receiver.store.sqlite import SQLITE, SQLiteStore
from submitter.client import Provider

DUE = 100
#: Unfinished jobs (next check in the future) as a share of the ledger; the rest are stored.
FUTURE_SHARE = 0.01
#: Their next check is at least this far ahead, so none falls due during a run (the budget is shorter).
FUTURE_AFTER = 900
PROVIDER_URL = "http://provider.bench"
SIZES: dict[str, dict[str, int]] = {
    "full": {"subject": 1_000_000, "baseline": 1_000, "runs": 3, "passes_idle": 21, "passes_due": 5, "budget": 900},
    "tiny": {"subject": 10_000, "baseline": 1_000, "runs": 1, "passes_idle": 5, "passes_due": 1, "budget": 120},
}
COLUMNS = ("id", "provider", "model", "params", "status", "created_at", "deadline_at", "provider_job_id",
           "submitted_at", "updated_at", "next_check_at", "polls")
INSERT_SQL = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
RESET_SQL = (
    "UPDATE jobs SET status = 'submitted', next_check_at = ?, lease_owner = NULL, lease_until = NULL,"
    " polls = 0, progress = NULL, updated_at = ? WHERE id = ?"
)
#: The sweep's two claims: `claim_due(downloads=False)` for checks, `downloads=True` for downloads.
CLAIMS = {"checks": False, "downloads": True}
CHUNK = 50_000


def due_ids() -> list[str]:
    return [f"fh_due{i:04d}" for i in range(DUE)]


def claim_queries(now: float) -> dict[str, Query]:
    """The claim statements the store runs, with their arguments: receiver/store/sql/leases.py's `claim_due`
    called as the sweep calls it (checks in batches of 100, downloads up to download_concurrency)."""
    settings = Settings.from_env({})
    limits = {"checks": 100, "downloads": settings.download_concurrency}
    return {kind: next(sql.claim_due("bench-claim", now, settings.lease_seconds, limits[kind], downloads))
            for kind, downloads in CLAIMS.items()}


def _rows(total: int, now: float) -> Iterator[tuple[Any, ...]]:
    """`total` jobs: DUE in the due set (not due yet), FUTURE_SHARE unfinished, the rest stored."""
    others = total - DUE
    future = max(1, round(total * FUTURE_SHARE))
    for i in range(others):
        created = now - 30 * 86400 + i * (30 * 86400 / others)
        params = f'{{"prompt": "bench ledger job {i}", "width": 1024}}'
        if i >= others - future:  # the newest jobs are still running: next check within the hour
            status = "running" if i % 2 else "submitted"
            yield (f"fh_job{i:08d}", "bfl", "flux-dev", params, status, now - 60, now + 86400, f"task-{i:08d}",
                   now - 60, now - 30, now + FUTURE_AFTER + (i % (3600 - FUTURE_AFTER)), i % 5)
        else:
            yield (f"fh_job{i:08d}", "bfl", "flux-dev", params, "stored", created, created + 1800, f"task-{i:08d}",
                   created, created + 20, None, 0)
    for n, job_id in enumerate(due_ids()):
        yield (job_id, "bfl", "flux-dev", '{"prompt": "due"}', "submitted", now - 600, now + 86400,
               f"due-task-{n:04d}", now - 600, now - 600, now + 7200, 0)


def reset_args(due: bool, now: float) -> list[tuple[Any, ...]]:
    """RESET_SQL's arguments: the due set unleased, next check in the past (due) or in two hours (not due)."""
    return [((now - 60 + n * 0.01) if due else (now + 7200), now, job_id) for n, job_id in enumerate(due_ids())]


# -- SQLite ---------------------------------------------------------------------------------

async def build_sqlite(path: Path, total: int, now: float) -> float:
    """The project's schema, then `total` jobs bulk-inserted; returns seconds taken."""
    started = time.perf_counter()
    store = SQLiteStore(str(path))
    await store.open()  # runs the migrations
    await store.close()
    cancel = threading.Event()
    try:
        await asyncio.to_thread(_fill, path, total, now, cancel)
    finally:
        cancel.set()  # if cancelled: the thread stops after its current chunk
    return time.perf_counter() - started


def _fill(path: Path, total: int, now: float, cancel: threading.Event) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=OFF")  # bulk load only: this connection's commits
        rows = _rows(total, now)
        while True:
            chunk = [row for _, row in zip(range(CHUNK), rows, strict=False)]
            if not chunk or cancel.is_set():
                break
            db.execute("BEGIN")
            db.executemany(INSERT_SQL, chunk)
            db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def set_due_sqlite(path: Path, due: bool, now: float) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(RESET_SQL, reset_args(due, now))
        db.execute("COMMIT")
    finally:
        db.close()


def query_plan(path: Path, query: Query) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + SQLITE.compile(query.sql), query.args)]
    finally:
        db.close()


def not_indexed(statement: str) -> str:
    """The claim with its due-job search forced to a table scan (`FROM jobs NOT INDEXED`)."""
    forced, found = re.subn(r"\bFROM jobs\b", "FROM jobs NOT INDEXED", statement)
    if found != 1:
        raise RuntimeError(f"the claim statement no longer has one `FROM jobs` to force a scan on: {statement}")
    return forced


def time_claim_sqlite(path: Path, query: Query, *, scan: bool, repeats: int) -> float:
    """Median seconds of the claim statement itself, rolled back each time; `scan`: NOT INDEXED."""
    statement = SQLITE.compile(query.sql)
    statement = not_indexed(statement) if scan else statement
    db = sqlite3.connect(path, isolation_level=None)
    try:
        times = []
        for _ in range(repeats + 1):  # the first one warms the cache
            db.execute("BEGIN IMMEDIATE")
            started = time.perf_counter()
            db.execute(statement, query.args).fetchall()
            times.append(time.perf_counter() - started)
            db.execute("ROLLBACK")
        return statistics.median(times[1:])
    finally:
        db.close()


# -- both backends ----------------------------------------------------------------------------

class Ledger:
    """One ledger with a Runtime on it (the real store) whose provider answers every status check with Pending."""

    def __init__(self, name: str, db: str, total: int, tmp: Path,
                 reset: Callable[[bool, float], Awaitable[None]]) -> None:
        self.name, self.db, self.total, self.tmp, self.reset = name, db, total, tmp, reset
        self.polls = 0
        self.store: Any = None
        self.rt: Runtime | None = None

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.polls += 1
        return httpx.Response(200, json={"id": request.url.params.get("id", ""), "status": "Pending"})

    async def open(self) -> Runtime:
        base = Settings.from_env({})
        settings = base.with_overrides(
            db=self.db,
            results=self.tmp / f"results-{self.name}",
            providers={n: Provider(p.dialect, PROVIDER_URL, "bench-key") for n, p in base.providers.items()},
            download_hosts=("provider.bench",),
        )
        self.store = open_store(self.db)
        await self.store.open()
        api = httpx.AsyncClient(transport=httpx.MockTransport(self._answer))
        cdn = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(404)))
        self.rt = Runtime(settings=settings, store=self.store, api=api, cdn=cdn)
        return self.rt

    async def close(self) -> None:
        if self.rt is not None:
            rt, self.rt = self.rt, None
            await rt.api.aclose()
            await rt.cdn.aclose()
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()

    async def sweep(self, due: bool) -> tuple[float, dict[str, int]]:
        """Reset the due set, then time one sweep pass; returns (seconds, report)."""
        assert self.rt is not None
        await self.reset(due, time.time())
        polls_before = self.polls
        started = time.perf_counter()
        report = await sweep_once(self.rt)
        elapsed = time.perf_counter() - started
        expected = DUE if due else 0
        if report.claimed != expected or self.polls - polls_before != expected:
            raise RuntimeError(
                f"{self.name} ledger of {self.total}: expected {expected} jobs claimed and polled, got"
                f" {report.as_dict()} and {self.polls - polls_before} polls"
            )
        return elapsed, report.as_dict()


@contextlib.asynccontextmanager
async def opened(*ledgers: Ledger) -> AsyncIterator[None]:
    try:
        for ledger in ledgers:
            await ledger.open()
        yield
    finally:
        for ledger in ledgers:
            await ledger.close()


def _steal() -> float:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return values[7] / os.sysconf("SC_CLK_TCK")


class Passes:
    """Timed sweep passes on a baseline and a subject ledger, alternating."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, bool], list[float]] = {}
        self.reports: dict[tuple[str, bool], dict[str, int]] = {}
        self.steal = 0.0

    async def run(self, baseline: Ledger, subject: Ledger, config: dict[str, int]) -> Passes:
        steal_before = _steal()
        for ledger in (baseline, subject):
            await ledger.sweep(True)  # warm-up, untimed
        for due in (False, True):
            passes = config["passes_due" if due else "passes_idle"]
            for _ in range(config["runs"]):
                # One run: `passes` passes on each ledger, alternating; the run's figure is their median.
                run_times: dict[str, list[float]] = {"baseline": [], "subject": []}
                for _ in range(passes):
                    for label, ledger in (("baseline", baseline), ("subject", subject)):
                        elapsed, report = await ledger.sweep(due)
                        run_times[label].append(elapsed)
                        self.reports[(label, due)] = report
                for label, values in run_times.items():
                    self.times.setdefault((label, due), []).append(statistics.median(values))
        self.steal = _steal() - steal_before
        return self

    def ms(self, label: str, due: bool) -> float:
        return statistics.median(self.times[(label, due)]) * 1000

    def runs_text(self, due: bool) -> str:
        return (f"runs ms: subject {[round(t * 1000, 2) for t in self.times[('subject', due)]]},"
                f" baseline {[round(t * 1000, 2) for t in self.times[('baseline', due)]]}")


def _row(metric: str, value: float, unit: str, baseline: float | None, note: str) -> dict[str, Any]:
    ratio = round(value / baseline, 3) if baseline else None
    return {"metric": metric, "value": round(value, 3), "unit": unit,
            "baseline": None if baseline is None else round(baseline, 3), "ratio": ratio, "note": note}


def pass_rows(backend: str, passes: Passes, config: dict[str, int], store: str, plan_note: str) -> list[dict[str, Any]]:
    big, small, runs = f"{config['subject']:,}", f"{config['baseline']:,}", config["runs"]
    return [
        _row(f"{backend}: sweep pass, 0 due, {big}-job ledger", passes.ms("subject", False), "ms",
             passes.ms("baseline", False),
             f"baseline: the same pass on a {small}-job ledger; median of {runs} runs, each the median of"
             f" {config['passes_idle']} passes alternating baseline/subject; {passes.runs_text(False)}; {plan_note}"),
        _row(f"{backend}: sweep pass, 100 due, {big}-job ledger", passes.ms("subject", True), "ms",
             passes.ms("baseline", True),
             f"baseline: {small}-job ledger with the same 100 due jobs; each due job is claimed, polled (mock"
             f" provider: Pending at once), moved to running and released, one committed transaction per step"
             f" ({store}); median of {runs} runs, each the median of {config['passes_due']} passes"
             f" alternating baseline/subject; report {passes.reports[('subject', True)]}; {passes.runs_text(True)}"),
    ]


def control_rows(backend: str, how: str, timed: dict[str, tuple[float, float]], config: dict[str, int],
                 repeats: int) -> list[dict[str, Any]]:
    return [
        _row(f"{backend}: {kind} claim, {how}, {config['subject']:,}-job ledger", scan * 1000, "ms", index * 1000,
             "control, not a headline: baseline is the same statement through jobs_due; what each such claim in a"
             f" pass would cost if the index were not used (0 due, rolled back, warm cache, median of {repeats})")
        for kind, (index, scan) in timed.items()
    ]


async def _measure_sqlite(config: dict[str, int], tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    now, repeats = time.time(), max(3, config["runs"])
    paths = {label: tmp / f"{label}.db" for label in ("baseline", "subject")}
    build_s = {label: await build_sqlite(path, config[label], now) for label, path in paths.items()}
    queries = claim_queries(time.time())
    plans = {kind: query_plan(paths["subject"], query) for kind, query in queries.items()}
    indexed = all(any("jobs_due" in step for step in plan) and not any(step.startswith("SCAN jobs") for step in plan)
                  for plan in plans.values())
    timed = {kind: (await asyncio.to_thread(time_claim_sqlite, paths["subject"], query, scan=False, repeats=repeats),
                    await asyncio.to_thread(time_claim_sqlite, paths["subject"], query, scan=True, repeats=repeats))
             for kind, query in queries.items()}

    def reset(path: Path) -> Callable[[bool, float], Awaitable[None]]:
        return lambda due, at: asyncio.to_thread(set_due_sqlite, path, due, at)

    baseline, subject = (Ledger(f"sqlite-{label}", str(paths[label]), config[label], tmp, reset(paths[label]))
                         for label in ("baseline", "subject"))
    async with opened(baseline, subject):
        passes = await Passes().run(baseline, subject, config)
    verdict = ("the claims use the jobs_due index" if indexed
               else "a claim does NOT use the jobs_due index (table scan)")
    plan_note = f"{verdict}: EXPLAIN QUERY PLAN: " + "; ".join(f"{k} claim: {' / '.join(p)}" for k, p in plans.items())
    rows = [*pass_rows("SQLite", passes, config, "synchronous=FULL: fsync'd", plan_note),
            *control_rows("SQLite", "forced table scan (NOT INDEXED)", timed, config, repeats)]
    return rows, {
        "sqlite": sqlite3.sqlite_version,
        "db_bytes_subject": paths["subject"].stat().st_size,
        "db_bytes_baseline": paths["baseline"].stat().st_size,
        "build_seconds_subject": round(build_s["subject"], 1),
        "claim_plans": plans,
        "claims_use_jobs_due": indexed,
        "store": "SQLiteStore (WAL, synchronous=FULL), one warm-up pass per ledger before timing",
        "steal_seconds_during_passes": round(passes.steal, 2),
    }


async def _measure_postgres(config: dict[str, int], tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    now, repeats = time.time(), max(3, config["runs"])
    async with contextlib.AsyncExitStack() as stack:
        urls = {label: await stack.enter_async_context(pg.schema(label)) for label in ("baseline", "subject")}
        build_s = {label: await pg.build(url, COLUMNS, _rows(config[label], now)) for label, url in urls.items()}
        conns: dict[str, Any] = {}  # one connection per ledger for the resets
        for label, url in urls.items():
            conns[label] = await pg.connect(url)
            stack.push_async_callback(conns[label].close)
        subject_url = urls["subject"]
        await pg.reset(conns["subject"], RESET_SQL, reset_args(True, time.time()))  # plans with 100 due
        plans, generic = await pg.claim_plans(subject_url, claim_queries(time.time()))
        await pg.reset(conns["subject"], RESET_SQL, reset_args(False, time.time()))  # the control with 0 due
        timed, control_plans = await pg.control(subject_url, claim_queries(time.time()), repeats)

        def reset(conn: Any) -> Callable[[bool, float], Awaitable[None]]:
            return lambda due, at: pg.reset(conn, RESET_SQL, reset_args(due, at))

        baseline, subject = (Ledger(f"postgresql-{label}", urls[label], config[label], tmp, reset(conns[label]))
                             for label in ("baseline", "subject"))
        async with opened(baseline, subject):
            passes = await Passes().run(baseline, subject, config)
            counts = await pg.plan_counts(subject.store, claim_queries(time.time()))
        sizes = {label: await pg.table_bytes(conn) for label, conn in conns.items()}
    indexed, plan_note = pg.verdict(plans, counts)
    rows = [*pass_rows("PostgreSQL", passes, config, "synchronous_commit=on", plan_note),
            *control_rows("PostgreSQL", "index and bitmap scans off", timed, config, repeats)]
    return rows, {
        "table_bytes_subject": sizes["subject"],
        "table_bytes_baseline": sizes["baseline"],
        "build_seconds_subject": round(build_s["subject"], 1),
        "claim_plans": plans,
        "claims_use_jobs_due": indexed,
        "claim_plans_generic": generic,
        "claim_plans_by_the_store": counts,
        "control_plans": control_plans,
        "store": "PostgresStore (asyncpg pool of 10), each ledger in its own schema, VACUUM (ANALYZE) after COPY;"
                 " one warm-up pass per ledger before timing",
        "steal_seconds_during_passes": round(passes.steal, 2),
    }


async def run(size: str = "full") -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    config = SIZES[size]
    server = await pg.server_info()  # no PostgreSQL: fail now, before building anything
    tmp = Path(tempfile.mkdtemp(prefix="fluxhook-bench-sweep-"))
    try:
        async with asyncio.timeout(config["budget"]):
            sqlite_rows, sqlite_env = await _measure_sqlite(config, tmp)
            pg_rows, pg_env = await _measure_postgres(config, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "name": "sweep_cost",
        "rows": [*sqlite_rows, *pg_rows],
        "environment": {
            "size": size,
            "python": platform.python_version(),
            "nproc": os.cpu_count(),
            "ledger_subject_jobs": config["subject"],
            "ledger_baseline_jobs": config["baseline"],
            "ledger_mix": f"{DUE} due-set submitted jobs, {FUTURE_SHARE:.0%} unfinished with a next check"
                          f" {FUTURE_AFTER // 60} to 60 minutes ahead, the rest stored (next_check_at NULL);"
                          " no files or events rows",
            "sqlite": sqlite_env,
            "postgresql": {**server, **pg_env},
        },
    }


if __name__ == "__main__":
    main(run)

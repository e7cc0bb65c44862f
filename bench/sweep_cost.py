"""Cost of one sweep pass against the size of the ledger.

    python -m bench.sweep_cost            # 1,000,000-job ledger against a 1,000-job one
    python -m bench.sweep_cost tiny       # 10,000 against 1,000: a seconds-long smoke run

Question: does one pass of `receiver.sweep.sweep_once` cost the same whether the
ledger holds a thousand jobs or a million, when none or 100 of them are due? It
must, since `serve` runs a pass every few seconds: the claim has to find due jobs
through the `jobs_due` index on the next-check time, never by scanning the table.

Two SQLite ledgers are built with the project's own schema (a `SQLiteStore` is
opened once so the migrations run), then filled with `executemany` in large
transactions: mostly terminal `stored` jobs (no next-check time), 1 % unfinished
jobs whose next check is in the future, and a set of 100 `submitted` jobs with a
provider task id whose next check is either in the past ("100 due") or in the
future ("0 due"). The subject is the large ledger; the baseline is a 1,000-job
ledger holding the same 100-job set, measured in the same run and alternating
with the subject, so the ratio shows whether the cost grows with the ledger.

Each pass runs on a `Runtime` built directly (as tests/harness.py does) with the
real `SQLiteStore` (WAL, synchronous=FULL) and a provider API client on
`httpx.MockTransport` answering every status check at once with `Pending`, so
only the receiver's own work is timed. Between passes the due set is reset
(status `submitted`, next check in the past, no lease). One untimed warm-up pass
per ledger runs first, so the figures are the steady state of a running
receiver, not a cold page cache.

The claim query's `EXPLAIN QUERY PLAN` is reported, and as a control the same
query with `NOT INDEXED` (a forced table scan) is timed on the large ledger:
that is what a pass would cost if the index were not used.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench._cli import main
from receiver.runtime import Runtime
from receiver.settings import Settings
from receiver.store.sqlite import SQLiteStore
from receiver.sweep import sweep_once
from submitter.client import Provider

DUE = 100
#: Unfinished jobs (next check in the future) as a share of the ledger; the rest are stored.
FUTURE_SHARE = 0.01
PROVIDER_URL = "http://provider.bench"
SIZES: dict[str, dict[str, int]] = {
    "full": {"subject": 1_000_000, "baseline": 1_000, "runs": 3, "passes_idle": 21, "passes_due": 5, "budget": 900},
    "tiny": {"subject": 10_000, "baseline": 1_000, "runs": 1, "passes_idle": 5, "passes_due": 1, "budget": 120},
}
CLAIM_SQL = (
    "SELECT id FROM jobs WHERE next_check_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
    " ORDER BY download_by IS NULL, download_by, next_check_at LIMIT ?"
)
#: What `SQLiteStore.claim_due` actually runs (the SELECT above as a subquery).
CLAIM_UPDATE_SQL = (
    "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE id IN (" + CLAIM_SQL + ") RETURNING *"
)
INSERT_SQL = (
    "INSERT INTO jobs (id, provider, model, params, status, created_at, deadline_at, provider_job_id,"
    " submitted_at, updated_at, next_check_at, polls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
CHUNK = 50_000


def due_ids() -> list[str]:
    return [f"fh_due{i:04d}" for i in range(DUE)]


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
                   now - 60, now - 30, now + 60 + (i % 3540), i % 5)
        else:
            yield (f"fh_job{i:08d}", "bfl", "flux-dev", params, "stored", created, created + 1800, f"task-{i:08d}",
                   created, created + 20, None, 0)
    for n, job_id in enumerate(due_ids()):
        yield (job_id, "bfl", "flux-dev", '{"prompt": "due"}', "submitted", now - 600, now + 86400,
               f"due-task-{n:04d}", now - 600, now - 600, now + 7200, 0)


async def build_ledger(path: Path, total: int, now: float) -> float:
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


def set_due(path: Path, due: bool, now: float) -> None:
    """Put the due set back in `submitted`, unleased, next check in the past (due) or future (not due)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "UPDATE jobs SET status = 'submitted', next_check_at = ?, lease_owner = NULL, lease_until = NULL,"
            " polls = 0, progress = NULL, updated_at = ? WHERE id = ?",
            [((now - 60 + n * 0.01) if due else (now + 7200), now, job_id) for n, job_id in enumerate(due_ids())],
        )
        db.execute("COMMIT")
    finally:
        db.close()


def query_plan(path: Path, sql: str, args: tuple[Any, ...]) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args)]
    finally:
        db.close()


def time_claim_select(path: Path, now: float, *, scan: bool, repeats: int) -> float:
    """Median seconds of the bare claim SELECT (read only); `scan` forces a table scan (NOT INDEXED)."""
    sql = CLAIM_SQL.replace("FROM jobs", "FROM jobs NOT INDEXED") if scan else CLAIM_SQL
    db = sqlite3.connect(path)
    try:
        times = []
        for _ in range(repeats + 1):  # the first one warms the cache
            started = time.perf_counter()
            db.execute(sql, (now, now, 100)).fetchall()
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:])
    finally:
        db.close()


class Ledger:
    """One ledger file with a Runtime on it whose provider answers every status check with Pending."""

    def __init__(self, path: Path, total: int, tmp: Path) -> None:
        self.path, self.total, self.tmp = path, total, tmp
        self.polls = 0
        self.rt: Runtime | None = None
        self.build_s = 0.0

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.polls += 1
        return httpx.Response(200, json={"id": request.url.params.get("id", ""), "status": "Pending"})

    async def open(self) -> Runtime:
        base = Settings.from_env({})
        settings = base.with_overrides(
            db=str(self.path),
            results=self.tmp / f"results-{self.total}",
            providers={n: Provider(p.dialect, PROVIDER_URL, "bench-key") for n, p in base.providers.items()},
            download_hosts=("provider.bench",),
        )
        store = SQLiteStore(str(self.path))
        await store.open()
        api = httpx.AsyncClient(transport=httpx.MockTransport(self._answer))
        cdn = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(404)))
        self.rt = Runtime(settings=settings, store=store, api=api, cdn=cdn)
        return self.rt

    async def close(self) -> None:
        if self.rt is not None:
            rt, self.rt = self.rt, None
            await rt.api.aclose()
            await rt.cdn.aclose()
            await rt.store.close()  # type: ignore[attr-defined]

    async def sweep(self, due: bool) -> tuple[float, dict[str, int]]:
        """Reset the due set, then time one sweep pass; returns (seconds, report)."""
        assert self.rt is not None
        await asyncio.to_thread(set_due, self.path, due, time.time())
        polls_before = self.polls
        started = time.perf_counter()
        report = await sweep_once(self.rt)
        elapsed = time.perf_counter() - started
        expected = DUE if due else 0
        if report.claimed != expected or self.polls - polls_before != expected:
            raise RuntimeError(
                f"ledger of {self.total}: expected {expected} jobs claimed and polled, got {report.as_dict()}"
                f" and {self.polls - polls_before} polls"
            )
        return elapsed, report.as_dict()


def _steal() -> float:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return values[7] / os.sysconf("SC_CLK_TCK")


def _row(metric: str, value: float, unit: str, baseline: float | None, note: str) -> dict[str, Any]:
    ratio = round(value / baseline, 3) if baseline else None
    return {"metric": metric, "value": round(value, 3), "unit": unit,
            "baseline": None if baseline is None else round(baseline, 3), "ratio": ratio, "note": note}


async def _measure(size: str, tmp: Path) -> dict[str, Any]:
    config = SIZES[size]
    runs, now = config["runs"], time.time()
    subject = Ledger(tmp / "subject.db", config["subject"], tmp)
    baseline = Ledger(tmp / "baseline.db", config["baseline"], tmp)
    for ledger in (baseline, subject):
        ledger.build_s = await build_ledger(ledger.path, ledger.total, now)
    plan = query_plan(subject.path, CLAIM_SQL, (now, now, 100))
    update_plan = query_plan(subject.path, CLAIM_UPDATE_SQL, ("o", now, now, now, 100))
    indexed = any("jobs_due" in step for step in plan)
    scanned = any(step.startswith("SCAN jobs") for step in plan)
    select_index = await asyncio.to_thread(time_claim_select, subject.path, now, scan=False, repeats=max(3, runs))
    select_scan = await asyncio.to_thread(time_claim_select, subject.path, now, scan=True, repeats=max(3, runs))
    times: dict[tuple[str, bool], list[float]] = {}
    reports: dict[tuple[str, bool], dict[str, int]] = {}
    steal_before = _steal()
    try:
        for ledger in (baseline, subject):
            await ledger.open()
            await ledger.sweep(True)  # warm-up, untimed
        for due in (False, True):
            passes = config["passes_due" if due else "passes_idle"]
            for _ in range(runs):
                # One run: `passes` passes on each ledger, alternating; the run's figure is their median.
                run_times: dict[str, list[float]] = {"baseline": [], "subject": []}
                for _ in range(passes):
                    for label, ledger in (("baseline", baseline), ("subject", subject)):
                        elapsed, report = await ledger.sweep(due)
                        run_times[label].append(elapsed)
                        reports[(label, due)] = report
                for label, values in run_times.items():
                    times.setdefault((label, due), []).append(statistics.median(values))
    finally:
        for ledger in (baseline, subject):
            await ledger.close()
    steal = _steal() - steal_before

    def ms(label: str, due: bool) -> float:
        return statistics.median(times[(label, due)]) * 1000

    def runs_text(due: bool) -> str:
        return (f"runs ms: subject {[round(t * 1000, 2) for t in times[('subject', due)]]},"
                f" baseline {[round(t * 1000, 2) for t in times[('baseline', due)]]}")

    plan_text = " / ".join(plan)
    verdict = ("claim query uses the jobs_due index" if indexed and not scanned
               else "claim query does NOT use the jobs_due index (table scan)")
    big, small = f"{subject.total:,}", f"{baseline.total:,}"
    rows = [
        _row(f"sweep pass, 0 due, {big}-job ledger", ms("subject", False), "ms", ms("baseline", False),
             f"baseline: the same pass on a {small}-job ledger; median of {runs} runs, each the median of"
             f" {config['passes_idle']} passes alternating baseline/subject; {runs_text(False)};"
             f" {verdict}: EXPLAIN QUERY PLAN: {plan_text}"),
        _row(f"sweep pass, 100 due, {big}-job ledger", ms("subject", True), "ms", ms("baseline", True),
             f"baseline: {small}-job ledger with the same 100 due jobs; each due job is claimed, polled (mock"
             f" provider: Pending at once), moved to running and released, one fsync'd transaction per step"
             f" (synchronous=FULL); median of {runs} runs, each the median of {config['passes_due']} passes"
             f" alternating baseline/subject; report {reports[('subject', True)]}; {runs_text(True)}"),
        _row(f"claim SELECT, forced table scan (NOT INDEXED), {big}-job ledger", select_scan * 1000, "ms",
             select_index * 1000,
             "control, not a headline: baseline is the same query through jobs_due; shows what a pass would"
             " cost per claim if the index were not used (0 due, read-only, warm cache, median of"
             f" {max(3, runs)})"),
    ]
    return {
        "name": "sweep_cost",
        "rows": rows,
        "environment": {
            "size": size,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "nproc": os.cpu_count(),
            "ledger_subject_jobs": subject.total,
            "ledger_baseline_jobs": baseline.total,
            "ledger_mix": f"{DUE} due-set submitted jobs, {FUTURE_SHARE:.0%} unfinished with a future next check,"
                          " the rest stored (next_check_at NULL); no files or events rows",
            "db_bytes_subject": subject.path.stat().st_size,
            "db_bytes_baseline": baseline.path.stat().st_size,
            "build_seconds_subject": round(subject.build_s, 1),
            "claim_select_plan": plan,
            "claim_update_plan": update_plan,
            "claim_uses_jobs_due": indexed and not scanned,
            "store": "SQLiteStore (WAL, synchronous=FULL), one warm-up pass per ledger before timing",
            "steal_seconds_during_passes": round(steal, 2),
        },
    }


async def run(size: str = "full") -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}")
    tmp = Path(tempfile.mkdtemp(prefix="fluxhook-bench-sweep-"))
    try:
        async with asyncio.timeout(SIZES[size]["budget"]):
            return await _measure(size, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(run)

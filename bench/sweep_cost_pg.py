"""The PostgreSQL side of bench/sweep_cost.py: server, schemas, bulk load, plans and the control.

The server is FLUXHOOK_BENCH_PG, else FLUXHOOK_TEST_PG, else the local one (trust auth, database
`test`), as for the tests. A server that does not answer is an error, never a skip. Every ledger
lives in a schema of its own, dropped on the way out (also on failure or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg

from receiver.store.postgres import POSTGRES, PostgresStore
from receiver.store.sql import Query

PG_URL = (os.environ.get("FLUXHOOK_BENCH_PG") or os.environ.get("FLUXHOOK_TEST_PG")
          or "postgresql://postgres@127.0.0.1:5432/test")
#: The forced-scan control: the planner may use neither an index scan nor a bitmap scan.
NO_INDEX = ("SET enable_indexscan = off", "SET enable_bitmapscan = off")


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def connect(
    url: str = PG_URL, *, who: str = "the sweep_cost benchmark measures the PostgreSQL ledger too"
) -> Any:
    """A connection to the benchmarks' PostgreSQL, or a RuntimeError saying how to start it (never a skip)."""
    try:
        return await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"{who}, and PostgreSQL did not answer at {url} ({type(exc).__name__}: {exc}); start it"
            " (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) or point"
            " FLUXHOOK_BENCH_PG at one"
        ) from exc


async def server_info() -> dict[str, Any]:
    """Fails clearly, before anything is built, if the server is missing."""
    conn = await connect()
    try:
        settings = ("server_version", "shared_buffers", "work_mem", "synchronous_commit", "plan_cache_mode", "jit")
        return {name: await conn.fetchval(f"SHOW {name}") for name in settings}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def schema(label: str) -> AsyncIterator[str]:
    """A new schema; yields a URL whose connections use it, and drops it (with its ledger) afterwards."""
    name = f"fh_bench_sweep_{label}_{uuid.uuid4().hex[:8]}"
    admin = await connect()
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        yield with_schema(PG_URL, name)
    finally:
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await admin.close()


async def build(url: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> float:
    """The project's schema (a PostgresStore opened once runs the migrations), `rows` loaded with COPY,
    then VACUUM (ANALYZE): statistics and the visibility map as autovacuum would leave them. Seconds."""
    started = time.perf_counter()
    store = PostgresStore(url)
    await store.open()
    await store.close()
    conn = await connect(url)
    try:
        await conn.copy_records_to_table("jobs", records=rows, columns=list(columns))
        await conn.execute("VACUUM (ANALYZE) jobs")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def table_bytes(conn: Any) -> int:
    return int(await conn.fetchval("SELECT pg_total_relation_size('jobs')"))


async def reset(conn: Any, sql: str, args: list[tuple[Any, ...]]) -> None:
    """The due-set reset (a `?` statement shared with SQLite), one transaction."""
    async with conn.transaction():
        await conn.executemany(POSTGRES.compile(sql), args)


async def _rolled_back(conn: Any, sql: str, *args: Any) -> tuple[list[Any], float]:
    """Run one statement in a transaction that is rolled back: (rows, seconds)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        started = time.perf_counter()
        rows = await conn.fetch(sql, *args)
        return rows, time.perf_counter() - started
    finally:
        await transaction.rollback()


async def explain(url: str, query: Query, *, analyze: bool = True, settings: Sequence[str] = ()) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement as the store sends it, with its arguments (a custom
    plan, as the store's prepared statements get while the plan cache keeps choosing them); rolled back."""
    conn = await connect(url)
    try:
        for setting in settings:
            await conn.execute(setting)
        options = "ANALYZE, BUFFERS" if analyze else "COSTS OFF"
        rows, _ = await _rolled_back(conn, f"EXPLAIN ({options}) {POSTGRES.compile(query.sql)}", *query.args)
        return [row[0] for row in rows]
    finally:
        await conn.close()


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    raise TypeError(f"no literal for {value!r}")


async def explain_generic(url: str, query: Query) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the generic plan (plan_cache_mode = force_generic_plan): the plan the
    statement gets once the plan cache stops planning it per call. Rolled back; the connection is closed."""
    conn = await connect(url)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE fh_claim AS {POSTGRES.compile(query.sql)}")
        call = f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE fh_claim({', '.join(map(_literal, query.args))})"
        rows, _ = await _rolled_back(conn, call)
        return [row[0] for row in rows]
    finally:
        await conn.close()


async def time_claim(url: str, query: Query, *, scan: bool, repeats: int) -> float:
    """Median seconds of the claim statement itself (rolled back each time); `scan`: index and bitmap
    scans disabled. A fresh connection, fewer than 5 calls after the warm-up: custom plans throughout."""
    conn = await connect(url)
    try:
        for setting in NO_INDEX if scan else ():
            await conn.execute(setting)
        sql = POSTGRES.compile(query.sql)
        times = [(await _rolled_back(conn, sql, *query.args))[1] for _ in range(repeats + 1)]
        return statistics.median(times[1:])  # the first one warms the cache
    finally:
        await conn.close()


async def plan_counts(store: PostgresStore, queries: dict[str, Query]) -> dict[str, dict[str, int]]:
    """How the store's own connections planned each statement: pg_prepared_statements' generic and custom
    plan counts, summed over every connection of its pool (all acquired at once, after the passes)."""
    pool = store._pool  # the store's own connections, where its prepared statements live
    conns = [await pool.acquire() for _ in range(pool.get_size())]
    try:
        counts = {kind: {"generic_plans": 0, "custom_plans": 0} for kind in queries}
        for conn in conns:
            for kind, query in queries.items():
                row = await conn.fetchrow(
                    "SELECT COALESCE(SUM(generic_plans), 0) AS g, COALESCE(SUM(custom_plans), 0) AS c"
                    " FROM pg_prepared_statements WHERE statement = $1", POSTGRES.compile(query.sql))
                counts[kind]["generic_plans"] += int(row["g"])
                counts[kind]["custom_plans"] += int(row["c"])
        return counts
    finally:
        for conn in conns:
            await pool.release(conn)


def nodes(plan: list[str]) -> list[str]:
    """The plan's nodes, top down, without costs or details: the short form for a note."""
    lines = plan[:1] + [line for line in plan[1:] if line.lstrip().startswith("->")]
    return [line.strip().removeprefix("->").strip().split("  (")[0] for line in lines]


def uses_jobs_due(plan: list[str]) -> bool:
    text = "\n".join(plan)
    return ("using jobs_due" in text or "on jobs_due" in text) and "Seq Scan on jobs" not in text


async def claim_plans(url: str, queries: dict[str, Query]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per claim: EXPLAIN (ANALYZE, BUFFERS) as the store runs it, and the same of its generic plan."""
    return ({kind: await explain(url, query) for kind, query in queries.items()},
            {kind: await explain_generic(url, query) for kind, query in queries.items()})


async def control(url: str, queries: dict[str, Query], repeats: int) -> tuple[dict[str, tuple[float, float]],
                                                                            dict[str, list[str]]]:
    """Per claim: (seconds through the index, seconds with index and bitmap scans off), and the latter's plan."""
    timed = {kind: (await time_claim(url, query, scan=False, repeats=repeats),
                    await time_claim(url, query, scan=True, repeats=repeats)) for kind, query in queries.items()}
    return timed, {kind: await explain(url, query, analyze=False, settings=NO_INDEX) for kind, query in queries.items()}


def verdict(plans: dict[str, list[str]], counts: dict[str, dict[str, int]]) -> tuple[bool, str]:
    """Whether every claim uses jobs_due, and the note that says so (with the plans' nodes)."""
    indexed = all(uses_jobs_due(plan) for plan in plans.values())
    custom = all(c["generic_plans"] == 0 and c["custom_plans"] > 0 for c in counts.values())
    text = (("the claims use the jobs_due index" if indexed else "a claim does NOT use the jobs_due index")
            + (", and the store's connections planned them per call (custom plans only)" if custom
               else f"; the store's connections used generic plans: {counts}"))
    return indexed, f"{text}: EXPLAIN ANALYZE nodes: " + "; ".join(
        f"{kind} claim: {' / '.join(nodes(plan))}" for kind, plan in plans.items())


if __name__ == "__main__":
    from bench._cli import describe

    describe(__doc__)

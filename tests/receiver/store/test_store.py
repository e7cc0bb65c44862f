"""The contract every Store backend passes. Add a backend to BACKENDS to run it here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.store import Event, Job, Store, StoreUnavailable
from receiver.store.postgres import PostgresStore
from receiver.store.sql.schema import MIGRATIONS
from receiver.store.sqlite import SQLiteStore
from submitter.bodies import Observation
from submitter.status import Status
from tests import ledger
from tests.pg import fresh_schema

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


@contextlib.asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SQLiteStore(str(tmp_path / "contract.db"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def postgres_store(tmp_path: Path) -> AsyncIterator[Store]:
    async with fresh_schema() as url:
        store = PostgresStore(url, pool_size=4)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


BACKENDS = {"sqlite": sqlite_store, "postgres": postgres_store}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        yield backend


def job(job_id: str = "j1", provider: str = "bfl", model: str = "flux-dev", **kw: object) -> Job:
    return Job(id=job_id, provider=provider, model=model, params={"prompt": "p"}, status=Status.QUEUED,
               created_at=NOW, deadline_at=NOW + 1800, next_check_at=NOW, **kw)  # type: ignore[arg-type]


def obs(status: Status | None, urls: tuple[str, ...] = (), provider_job_id: str | None = "p1") -> Observation:
    return Observation(provider_job_id, status, str(status), urls=urls)


def event(key: str, job_id: str = "j1") -> Event:
    return Event(job_id=job_id, provider="bfl", dedup_key=key, received_at=NOW, headers={"x": "y"},
                 body=b"{}", verdict="accepted:token")


async def test_create_get_list(store: Store) -> None:
    await store.create_job(job("a"))
    await store.create_job(job("b"))
    got = await store.get_job("a")
    assert got is not None and got.status == Status.QUEUED and got.params == {"prompt": "p"}
    assert await store.get_job("zzz") is None
    assert {j.id for j in await store.list_jobs()} == {"a", "b"}
    assert await store.list_jobs(Status.FAILED) == []


async def test_duplicate_job_id_is_refused(store: Store) -> None:
    await store.create_job(job("a"))
    with pytest.raises(Exception):  # noqa: B017 - backend-specific integrity error
        await store.create_job(job("a"))


async def test_submit_then_events_move_forward_only(store: Store) -> None:
    await store.create_job(job())
    outcome = await store.record_submit("j1", "p1", "https://poll", now=NOW, next_check_at=NOW + 60)
    assert outcome.changed and outcome.status == Status.SUBMITTED
    ran = await store.apply("j1", obs(Status.RUNNING), now=NOW + 1, next_check_at=NOW + 61)
    assert ran.changed and ran.status == Status.RUNNING
    done = await store.apply("j1", obs(Status.SUCCEEDED, ("https://r/0.png",)), now=NOW + 2, next_check_at=NOW + 2,
                             expires=(NOW + 600,))
    assert done.changed and done.status == Status.SUCCEEDED
    late = await store.apply("j1", obs(Status.RUNNING), now=NOW + 3, next_check_at=NOW + 99)
    assert not late.changed and late.status == Status.SUCCEEDED
    got = await store.get_job("j1")
    assert got is not None and got.next_check_at == NOW + 2 and got.polling_url == "https://poll"
    (record,) = await store.files("j1")
    assert record.url == "https://r/0.png" and record.expires_at == NOW + 600 and not record.stored


async def test_callback_racing_the_submit_answer(store: Store) -> None:
    await store.create_job(job())
    early = await store.apply("j1", obs(Status.SUCCEEDED, ("https://r",)), now=NOW, next_check_at=NOW,
                              expires=(NOW + 600,), event=event("e1"))
    assert early.status == Status.SUCCEEDED
    late = await store.record_submit("j1", "p1", "https://poll", now=NOW + 1, next_check_at=NOW + 60)
    assert not late.changed and late.status == Status.SUCCEEDED
    got = await store.get_job("j1")
    assert got is not None and got.provider_job_id == "p1" and got.polling_url == "https://poll"


async def test_event_dedup_is_a_unique_key(store: Store) -> None:
    await store.create_job(job())
    first = await store.apply("j1", obs(Status.RUNNING), now=NOW, next_check_at=NOW + 60, event=event("k"))
    again = await store.apply("j1", obs(Status.SUCCEEDED, ("https://r",)), now=NOW, next_check_at=NOW,
                              expires=(NOW + 600,), event=event("k"))
    assert first.changed and not first.duplicate
    assert again.duplicate and not again.changed and again.status == Status.RUNNING
    assert await ledger.count_events(store, "j1") == 1


async def test_concurrent_duplicates_apply_once(store: Store) -> None:
    await store.create_job(job())
    outcomes = await asyncio.gather(*(
        store.apply("j1", obs(Status.SUCCEEDED, ("https://r",)), now=NOW, next_check_at=NOW,
                    expires=(NOW + 600,), event=event("same"))
        for _ in range(5)
    ))
    assert sum(o.changed for o in outcomes) == 1
    assert sum(o.duplicate for o in outcomes) == 4


async def test_terminal_is_final_in_the_store(store: Store) -> None:
    await store.create_job(job())
    assert (await store.finish("j1", Status.FAILED, now=NOW, reason="provider error")).changed
    for status in (Status.RUNNING, Status.SUCCEEDED):
        outcome = await store.apply("j1", obs(status, ("https://r",)), now=NOW, next_check_at=NOW, expires=(NOW,))
        assert not outcome.changed and outcome.status == Status.FAILED
    assert not (await store.finish("j1", Status.STORED, now=NOW)).changed
    assert not (await store.finish("j1", Status.EXPIRED, now=NOW)).changed
    got = await store.get_job("j1")
    assert got is not None and got.error == "provider error" and got.next_check_at is None
    assert await store.files("j1") == []


async def test_stored_needs_succeeded(store: Store) -> None:
    await store.create_job(job())
    assert not (await store.finish("j1", Status.STORED, now=NOW)).changed


async def test_unknown_job(store: Store) -> None:
    assert not (await store.apply("nope", obs(Status.RUNNING), now=NOW, next_check_at=NOW)).found
    assert not (await store.finish("nope", Status.FAILED, now=NOW)).found


async def test_claims_are_exclusive_until_the_lease_ends(store: Store) -> None:
    for i in range(5):
        await store.create_job(job(f"j{i}"))
    a = await store.claim_due("A", now=NOW, lease=60, limit=3)
    b = await store.claim_due("B", now=NOW, lease=60, limit=10)
    assert len(a) == 3 and len(b) == 2 and not {j.id for j in a} & {j.id for j in b}
    assert await store.claim_due("C", now=NOW + 59, lease=60, limit=10) == []
    # A dead holder's leases lapse and are taken over.
    assert len(await store.claim_due("C", now=NOW + 61, lease=60, limit=10)) == 5


async def test_concurrent_claims_never_overlap(store: Store) -> None:
    for i in range(40):
        await store.create_job(job(f"j{i}"))
    results = await asyncio.gather(*(store.claim_due(f"w{i}", now=NOW, lease=60, limit=7) for i in range(8)))
    ids = [j.id for batch in results for j in batch]
    assert len(ids) == len(set(ids)) == 40


async def test_only_due_jobs_are_claimed_and_downloads_come_first(store: Store) -> None:
    await store.create_job(job("later"))
    await store.create_job(job("poll"))
    await store.create_job(job("dl-late"))
    await store.create_job(job("dl-soon"))
    await store.release("later", "x", expect=Status.QUEUED, next_check_at=NOW + 100)
    await ledger.claim(store, "later", "x", now=NOW, lease=1)
    await store.release("later", "x", expect=Status.QUEUED, next_check_at=NOW + 100)
    for job_id, expiry in (("dl-late", NOW + 3000), ("dl-soon", NOW + 500)):
        await store.apply(job_id, obs(Status.SUCCEEDED, ("https://r",), provider_job_id=job_id), now=NOW,
                          next_check_at=NOW, expires=(expiry,))
    claimed = await store.claim_due("A", now=NOW, lease=60, limit=2)
    assert [j.id for j in claimed] == ["dl-soon", "dl-late"]
    rest = await store.claim_due("A", now=NOW, lease=60, limit=10)
    assert [j.id for j in rest] == ["poll"]


async def test_release_keeps_a_schedule_set_by_someone_else(store: Store) -> None:
    await store.create_job(job())
    await store.record_submit("j1", "p1", None, now=NOW, next_check_at=NOW)
    (claimed,) = await store.claim_due("A", now=NOW, lease=60, limit=5)
    # While A polls, a callback reports success and schedules the download now.
    await store.apply("j1", obs(Status.SUCCEEDED, ("https://r",)), now=NOW, next_check_at=NOW, expires=(NOW + 600,))
    await store.release("j1", "A", expect=claimed.status, next_check_at=NOW + 300, polled=True)
    got = await store.get_job("j1")
    assert got is not None and got.next_check_at == NOW and got.lease_owner is None and got.polls == 1
    # Releasing with someone else's name does nothing.
    await ledger.claim(store, "j1", "B", now=NOW, lease=60)
    await store.release("j1", "A", expect=None, next_check_at=None)
    assert (await store.get_job("j1")).lease_owner == "B"  # type: ignore[union-attr]


async def test_slots_cap_active_jobs_per_provider_and_model(store: Store) -> None:
    for i in range(4):
        await store.create_job(job(f"k{i}", model="flux-kontext-max"))
    await store.create_job(job("d0", model="flux-dev"))
    await store.create_job(job("other", provider="deerapi"))
    assert await store.reserve_slot("k0", cap=3, model_cap=2, now=NOW)
    assert await store.reserve_slot("k1", cap=3, model_cap=2, now=NOW)
    assert not await store.reserve_slot("k2", cap=3, model_cap=2, now=NOW)  # model cap
    assert await store.reserve_slot("d0", cap=3, model_cap=3, now=NOW)
    assert not await store.reserve_slot("k3", cap=3, model_cap=3, now=NOW)  # provider cap
    assert await store.reserve_slot("other", cap=3, model_cap=3, now=NOW)  # other provider
    assert not await store.reserve_slot("k0", cap=9, model_cap=9, now=NOW)  # already held
    # A slot comes back when its job finishes at the provider.
    await store.record_submit("k0", "p", None, now=NOW, next_check_at=NOW)
    await store.apply("k0", obs(Status.SUCCEEDED, ("https://r",), "p"), now=NOW, next_check_at=NOW, expires=(NOW,))
    assert await store.reserve_slot("k2", cap=3, model_cap=2, now=NOW)
    # A deferred job gives its slot back.
    await store.defer("k1", next_check_at=NOW + 5, note="provider busy", now=NOW)
    assert await store.reserve_slot("k3", cap=3, model_cap=2, now=NOW)


async def test_parallel_reservations_respect_the_cap(store: Store) -> None:
    for i in range(20):
        await store.create_job(job(f"j{i}"))
    granted = await asyncio.gather(*(store.reserve_slot(f"j{i}", cap=6, model_cap=6, now=NOW) for i in range(20)))
    assert sum(granted) == 6


async def test_files_are_stored_once_and_fresh_urls_replace_stale_ones(store: Store) -> None:
    await store.create_job(job())
    urls = ("https://r/a", "https://r/b")
    await store.apply("j1", obs(Status.SUCCEEDED, urls), now=NOW, next_check_at=NOW, expires=(NOW + 10, NOW + 20))
    await store.store_file("j1", 0, path="j1/0.png", size=3, sha256="abc", content_type="image/png")
    fresh = ("https://r/a2", "https://r/b2")
    await store.apply("j1", obs(Status.SUCCEEDED, fresh), now=NOW, next_check_at=NOW, expires=(NOW + 600, NOW + 600))
    a, b = await store.files("j1")
    assert a.url == "https://r/a" and a.path == "j1/0.png" and a.sha256 == "abc"
    assert b.url == "https://r/b2" and not b.stored
    await store.store_file("j1", 1, path="j1/1.png", size=4, sha256="def", content_type="image/png")
    await store.store_file("j1", 1, path="j1/other.png", size=5, sha256="zzz", content_type="image/png")
    assert (await store.files("j1"))[1].path == "j1/1.png"
    assert (await store.finish("j1", Status.STORED, now=NOW)).changed


async def test_counts(store: Store) -> None:
    await store.create_job(job("a"))
    await store.create_job(job("b"))
    await store.finish("b", Status.FAILED, now=NOW)
    assert await store.counts() == {"queued": 1, "failed": 1}


async def test_sqlite_migrations_are_recorded_once(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        await store.close()
    import sqlite3

    rows = sqlite3.connect(path).execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(version, name) for version, name, _ in MIGRATIONS]


async def test_sqlite_upgrades_an_older_database_keeping_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
    version, name, sql = MIGRATIONS[0]
    for statement in filter(str.strip, sql.split(";")):
        old.execute(statement)
    old.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, name))
    old.execute("INSERT INTO jobs (id, provider, model, params, status, created_at, deadline_at)"
                " VALUES ('old', 'bfl', 'flux-dev', '{}', 'submitted', 1, 2)")
    old.commit()
    old.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        got = await store.get_job("old")
        assert got is not None and got.status == Status.SUBMITTED and got.options == {} and got.outputs == ()
    finally:
        await store.close()


async def test_sqlite_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "c.db"))
    with pytest.raises(StoreUnavailable):
        await store.get_job("x")
    bad = SQLiteStore(str(tmp_path / "missing-dir" / "x.db"))
    with pytest.raises(StoreUnavailable, match="cannot open"):
        await bad.open()


async def test_a_job_can_be_born_leased(store: Store) -> None:
    await store.create_job(job(lease_owner="creator", lease_until=NOW + 60))
    assert await store.claim_due("sweeper", now=NOW, lease=60, limit=5) == []
    assert await ledger.claim(store, "j1", "sweeper", now=NOW, lease=60) is None
    (taken,) = await store.claim_due("sweeper", now=NOW + 61, lease=60, limit=5)
    assert taken.lease_owner == "sweeper"


async def test_defer_keeps_a_slot_it_was_not_asked_to_release(store: Store) -> None:
    await store.create_job(job())
    assert await store.reserve_slot("j1", cap=1, model_cap=1, now=NOW)
    await store.defer("j1", next_check_at=NOW + 5, note="x", now=NOW, release_slot=False)
    assert (await store.get_job("j1")).slot_held  # type: ignore[union-attr]
    await store.defer("j1", next_check_at=NOW + 5, note="x", now=NOW)
    assert not (await store.get_job("j1")).slot_held  # type: ignore[union-attr]


async def test_set_note_replaces_and_clears_the_note(store: Store) -> None:
    await store.create_job(job())
    await store.set_note("j1", "download failing: cannot write 0.png (EACCES)", now=NOW)
    assert (await store.get_job("j1")).note == "download failing: cannot write 0.png (EACCES)"  # type: ignore[union-attr]
    await store.set_note("j1", None, now=NOW + 1)
    assert (await store.get_job("j1")).note is None  # type: ignore[union-attr]
    await store.set_note("nope", "x", now=NOW)  # an unknown job: nothing happens


async def test_a_late_submit_answer_reschedules_a_job_waiting_for_its_deadline(store: Store) -> None:
    await store.create_job(job())
    # Reconciled as "outcome unknown": no provider id, so nothing to poll until the deadline.
    await store.record_submit("j1", None, None, now=NOW, next_check_at=NOW + 1800, note="outcome unknown")
    await store.record_submit("j1", "p1", None, now=NOW + 5, next_check_at=NOW + 65)
    got = await store.get_job("j1")
    assert got is not None and got.provider_job_id == "p1" and got.next_check_at == NOW + 65


async def test_finish_only_from(store: Store) -> None:
    await store.create_job(job())
    await store.apply("j1", obs(Status.SUCCEEDED, ("https://r",)), now=NOW, next_check_at=NOW, expires=(NOW,))
    # The sweep saw the job as submitted and its deadline passed; a result arrived meanwhile.
    outcome = await store.finish("j1", Status.EXPIRED, now=NOW, only_from=frozenset({Status.SUBMITTED}))
    assert not outcome.changed and outcome.status == Status.SUCCEEDED


async def test_renew_extends_only_our_own_lease(store: Store) -> None:
    await store.create_job(job(lease_owner="A", lease_until=NOW + 10))
    assert await store.renew("j1", "A", until=NOW + 100)
    assert not await store.renew("j1", "B", until=NOW + 999)
    assert await store.claim_due("B", now=NOW + 50, lease=10, limit=5) == []


async def test_concurrent_applies_share_commits_but_fail_alone(store: Store) -> None:
    from receiver.store import TaskMismatch

    for i in range(10):
        await store.create_job(job(f"j{i}"))
    await store.record_submit("j0", "taken", None, now=NOW, next_check_at=NOW)
    calls = [store.apply(f"j{i}", obs(Status.RUNNING, provider_job_id=f"p{i}"), now=NOW, next_check_at=NOW + 60,
                         event=event(f"e{i}", f"j{i}")) for i in range(1, 10)]
    calls.append(store.apply("j0", obs(Status.RUNNING, provider_job_id="other"), now=NOW, next_check_at=NOW,
                             event=event("e0", "j0")))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(not isinstance(r, BaseException) and r.changed for r in results[:9])
    assert isinstance(results[9], TaskMismatch)
    assert await ledger.count_events(store, "j0") == 0  # its event was rolled back with it...
    assert all([await ledger.count_events(store, f"j{i}") == 1 for i in range(1, 10)])  # ...and only it


async def test_a_call_failing_after_its_writes_undoes_only_them_in_a_shared_commit(store: Store) -> None:
    """j0 names a provider task another job holds: its event is written, then the task claim fails.
    Batched with nine good calls, only j0's writes go (SQLite replays a failed batch one by one)."""
    from receiver.store import TaskMismatch

    for i in range(10):
        await store.create_job(job(f"j{i}"))
    await store.create_job(job("owner"))
    await store.record_submit("owner", "taken", None, now=NOW, next_check_at=NOW)
    calls = [store.apply(f"j{i}", obs(Status.RUNNING, provider_job_id=f"p{i}"), now=NOW, next_check_at=NOW + 60,
                         event=event(f"e{i}", f"j{i}")) for i in range(1, 10)]
    calls.insert(4, store.apply("j0", obs(Status.RUNNING, provider_job_id="taken"), now=NOW, next_check_at=NOW,
                                event=event("e0", "j0")))
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = results.pop(4)
    assert isinstance(failed, TaskMismatch)
    assert all(not isinstance(r, BaseException) and r.changed for r in results)
    assert await ledger.count_events(store, "j0") == 0
    j0 = await store.get_job("j0")
    assert j0 is not None and j0.status == Status.QUEUED and j0.provider_job_id is None
    for i in range(1, 10):
        done = await store.get_job(f"j{i}")
        assert done is not None and done.status == Status.RUNNING and done.provider_job_id == f"p{i}"
        assert await ledger.count_events(store, f"j{i}") == 1


def test_operations_run_without_a_transaction_are_one_statement() -> None:
    """PostgreSQL runs these in autocommit (OpsStore._single): each must be one statement to stay atomic."""
    from receiver.store import sql

    singles = [
        sql.create_job(job()), sql.mark_sending("j1", True), sql.renew("j1", "A", NOW), sql.note_repoll("j1"),
        sql.release("j1", "A", Status.QUEUED, NOW, False), sql.file_failed("j1", 0), sql.prune_events(NOW, 10),
        sql.claim_due("A", NOW, 60, 5, None), sql.defer("j1", NOW, None, NOW, True),
        sql.set_note("j1", "x", NOW),
    ]
    for op in singles:
        steps = [next(op)]
        with contextlib.suppress(StopIteration):
            while True:
                want = steps[-1].want  # type: ignore[union-attr]
                steps.append(op.send({"all": [], "one": None}.get(want, 1)))
        assert len(steps) == 1 and isinstance(steps[0], sql.Query), steps


async def test_a_many_query_answers_none_on_every_backend(store: Store) -> None:
    """`want="many"` runs its statement once per row of args and answers None, whatever the backend."""
    from receiver.store.sql import Op, Query

    def op() -> Op[tuple[object, int]]:
        answer = yield Query("INSERT INTO idempotency (key, fingerprint, job_id, created_at) VALUES (?, ?, ?, ?)",
                             (("a", "f", "j1", NOW), ("b", "f", "j2", NOW)), "many")
        row = yield Query("SELECT COUNT(*) FROM idempotency", (), "one")
        return answer, int(row[0])

    # _op: the backends' own runner of a shared operation (not part of the Store interface).
    assert await store._op(op()) == (None, 2)  # type: ignore[attr-defined]


async def test_a_question_mark_inside_a_string_literal_is_not_a_parameter(store: Store) -> None:
    """Statements are written with `?`; PostgreSQL's `$n` numbering skips string literals, quoted names
    and comments, so a literal `?` reaches the database as written on both backends."""
    from receiver.store.sql import Op, Query

    def op() -> Op[tuple[object, ...]]:
        row = yield Query("SELECT CAST(? AS TEXT) AS \"a?\", '?' AS b, 'it''s ?' AS c, CAST(? AS TEXT) AS d -- ?\n",
                          ("x", "y"), "one")
        return tuple(row)

    assert await store._op(op()) == ("x", "?", "it's ?", "y")  # type: ignore[attr-defined]  # the backends' runner


def test_placeholders_are_numbered_outside_literals_and_comments() -> None:
    from receiver.store.postgres import POSTGRES
    from receiver.store.sqlite import SQLITE

    sql = "UPDATE t SET a = ?, b = '?' WHERE \"c?\" = ? /* ? */ AND d = ? -- ?"
    assert POSTGRES.compile(sql) == "UPDATE t SET a = $1, b = '?' WHERE \"c?\" = $2 /* ? */ AND d = $3 -- ?"
    assert SQLITE.compile(sql) == sql

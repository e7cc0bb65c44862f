"""The outbox and deliveries part of the Store contract, on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.store import IdempotencyConflict, Store, TaskMismatch
from submitter.status import Status
from tests import ledger
from tests.receiver.store.test_store import BACKENDS, NOW, event, job, obs

pytestmark = pytest.mark.anyio


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        yield backend
TERMINAL = frozenset({"job.stored", "job.failed", "job.moderated", "job.expired", "job.canceled"})
ALL = TERMINAL | {"job.submitted", "job.running"}


async def _to_stored(store: Store, job_id: str) -> None:
    await store.record_submit(job_id, f"p-{job_id}", None, now=NOW, next_check_at=NOW + 60)
    await store.apply(job_id, obs(Status.RUNNING, provider_job_id=f"p-{job_id}"), now=NOW + 1, next_check_at=None)
    await store.apply(job_id, obs(Status.SUCCEEDED, ("https://r/a",), provider_job_id=f"p-{job_id}"),
                      now=NOW + 2, next_check_at=NOW, expires=(NOW + 600,))
    await store.store_file(job_id, 0, path=f"{job_id}/0.png", size=3, sha256="abc", content_type="image/png")
    await store.finish(job_id, Status.STORED, now=NOW + 3)


async def test_each_status_change_writes_one_event_in_order(store: Store) -> None:
    store.set_locator(lambda path: f"s3://bucket/{path}")
    await store.create_job(dataclasses.replace(job(), metadata={"user": 7}))
    assert await store.events_after(0) == []  # queued: nobody waits on it
    await _to_stored(store, "j1")
    events = await store.events_after(0)
    assert [e.type for e in events] == ["job.submitted", "job.running", "job.stored"]  # succeeded writes none
    assert [e.seq for e in events] == sorted(e.seq for e in events) and len({e.id for e in events}) == 3
    assert all(e.id.startswith("evt_") and e.job_id == "j1" for e in events)
    stored = events[-1]
    assert stored.data["status"] == "stored" and stored.data["metadata"] == {"user": 7}
    assert stored.data["created_at"] == "2027-01-15T08:00:00.000Z"
    assert stored.data["files"] == [{"n": 0, "size": 3, "sha256": "abc", "content_type": "image/png",
                                     "location": "s3://bucket/j1/0.png", "url": "/v1/jobs/j1/files/0"}]
    assert events[0].data["files"] == [] and events[0].data["provider_job_id"] == "p-j1"
    assert await store.last_seq() == stored.seq
    assert await ledger.event_by_id(store, stored.id) == stored
    assert [e.type for e in await store.events_after(events[0].seq)] == ["job.running", "job.stored"]
    assert [e.type for e in await store.events_after(0, types=frozenset({"job.stored"}))] == ["job.stored"]


async def test_repeats_and_refused_changes_write_no_event(store: Store) -> None:
    await store.create_job(job())
    await store.record_submit("j1", "p1", None, now=NOW, next_check_at=NOW)
    await store.apply("j1", obs(Status.RUNNING), now=NOW, next_check_at=None, event=event("a"))
    await store.apply("j1", obs(Status.RUNNING), now=NOW, next_check_at=None, event=event("a"))  # duplicate
    await store.apply("j1", obs(Status.RUNNING), now=NOW, next_check_at=None)  # same progress
    await store.apply("j1", obs(Status.SUBMITTED), now=NOW, next_check_at=None)  # backwards
    await store.finish("j1", Status.CANCELED, now=NOW)
    await store.finish("j1", Status.FAILED, now=NOW)  # terminal is final
    assert [e.type for e in await store.events_after(0)] == ["job.submitted", "job.running", "job.canceled"]


async def test_a_rolled_back_change_writes_no_event(store: Store) -> None:
    await store.create_job(job("a"))
    await store.create_job(job("b"))
    await store.record_submit("a", "pa", None, now=NOW, next_check_at=NOW)
    before = await store.last_seq()
    # "b" reported with a's provider task: the status update ran, then the unique key refused it.
    with pytest.raises(TaskMismatch):
        await store.apply("b", obs(Status.RUNNING, provider_job_id="pa"), now=NOW, next_check_at=None)
    assert (await store.get_job("b")).status == Status.QUEUED  # type: ignore[union-attr]
    assert await store.last_seq() == before


async def test_readers_never_see_a_later_event_before_an_earlier_one(store: Store) -> None:
    """Concurrent status changes commit their events in sequence order: a reader following the
    outbox by position misses none of them."""
    count = 40
    for n in range(count):
        await store.create_job(job(f"j{n}"))
    seen: list[int] = []
    done = asyncio.Event()

    async def follow() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            for e in await store.events_after(cursor):
                seen.append(e.seq)
                cursor = e.seq
            if finished:
                return
            await asyncio.sleep(0)

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(store.finish(f"j{n}", Status.CANCELED, now=NOW) for n in range(count)))
    done.set()
    await reader
    every = [e.seq for e in await store.events_after(0, limit=1000)]
    assert len(every) == count and seen == every


async def test_idempotent_create(store: Store) -> None:
    first, created = await store.create_job_once(job("a"), key="k", fingerprint="f1", now=NOW, ttl=3600)
    assert created and first.id == "a"
    again, created = await store.create_job_once(job("b"), key="k", fingerprint="f1", now=NOW + 1, ttl=3600)
    assert not created and again.id == "a" and await store.get_job("b") is None
    with pytest.raises(IdempotencyConflict):
        await store.create_job_once(job("c"), key="k", fingerprint="f2", now=NOW + 2, ttl=3600)
    later, created = await store.create_job_once(job("d"), key="k", fingerprint="f2", now=NOW + 4000, ttl=3600)
    assert created and later.id == "d"  # the key was forgotten after its time to live


async def test_concurrent_idempotent_creates_make_one_job(store: Store) -> None:
    results = await asyncio.gather(*(
        store.create_job_once(job(f"j{n}"), key="same", fingerprint="f", now=NOW, ttl=3600) for n in range(8)
    ))
    assert len({j.id for j, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert len(await store.list_jobs()) == 1


async def test_list_jobs_pages_by_keyset(store: Store) -> None:
    for n in range(7):
        await store.create_job(dataclasses.replace(job(f"j{n}", provider="bfl" if n % 2 else "replicate"),
                                                   created_at=NOW + n // 2))
    pages, before = [], None
    while True:
        page = await store.list_jobs(limit=3, before=before)
        if not page:
            break
        pages.append([j.id for j in page])
        before = (page[-1].created_at, page[-1].id)
    flat = [i for p in pages for i in p]
    assert sorted(flat) == [f"j{n}" for n in range(7)] and len(flat) == 7
    assert flat == [j.id for j in await store.list_jobs(limit=10)]
    assert {j.provider for j in await store.list_jobs(provider="bfl")} == {"bfl"}


async def test_deliveries_fan_out_claim_in_job_order_and_retry(store: Store) -> None:
    await store.create_job(job("early"))
    await store.finish("early", Status.CANCELED, now=NOW)  # before the sink existed: not owed to it
    state = await store.register_sink("hook:1", "webhook", "https://example.test/in", now=NOW)
    assert state.after_seq == await store.last_seq()
    await store.create_job(job())
    await _to_stored(store, "j1")
    assert await store.fan_out("hook:1", TERMINAL, now=NOW) == 3
    assert await store.fan_out("hook:1", TERMINAL, now=NOW) == 0
    [(delivery, evt)] = await store.claim_deliveries("me", sink="hook:1", now=NOW, lease=30, limit=10)
    assert evt.type == "job.stored" and delivery.event_id == evt.id and delivery.attempts == 0
    assert await store.claim_deliveries("other", sink="hook:1", now=NOW, lease=30, limit=10) == []  # leased
    assert await ledger.record_attempt(store, delivery.id, "me", at=NOW, code=503, latency_ms=2.0, error="HTTP 503",
                                      state="pending", next_at=NOW + 10)
    assert await store.claim_deliveries("me", sink="hook:1", now=NOW + 5, lease=30, limit=10) == []  # not due yet
    [(again, _)] = await store.claim_deliveries("other", sink="hook:1", now=NOW + 10, lease=30, limit=10)
    assert again.id == delivery.id and again.attempts == 1 and again.last_code == 503
    assert not await ledger.record_attempt(store, again.id, "me", at=NOW, code=200, latency_ms=1.0, error=None,
                                          state="delivered", next_at=None)  # not our lease
    assert await ledger.record_attempt(store, again.id, "other", at=NOW + 10, code=200, latency_ms=1.0, error=None,
                                      state="delivered", next_at=None)
    [done] = await store.deliveries("delivered")
    assert done.attempts == 2 and done.delivered_at == NOW + 10
    # Every attempt that went out is on record, the one made after its lease was lost too.
    assert [a["code"] for a in await store.delivery_attempts(done.id)] == [503, 200, 200]


async def test_one_job_s_deliveries_go_in_sequence(store: Store) -> None:
    await store.register_sink("s", "redis", "stream", now=NOW)
    await store.create_job(job("a"))
    await store.create_job(job("b"))
    await store.record_submit("a", "pa", None, now=NOW, next_check_at=NOW)
    await store.record_submit("b", "pb", None, now=NOW, next_check_at=NOW)
    await store.finish("a", Status.CANCELED, now=NOW)
    await store.fan_out("s", ALL, now=NOW)
    claimed = await store.claim_deliveries("me", sink="s", now=NOW, lease=30, limit=10)
    assert [(e.job_id, e.type) for _, e in claimed] == [("a", "job.submitted"), ("b", "job.submitted")]
    first = claimed[0][0]
    await ledger.record_attempt(store, first.id, "me", at=NOW, code=None, latency_ms=1, error="down", state="dead",
                               next_at=None)
    [(_, nxt)] = await store.claim_deliveries("me", sink="s", now=NOW, lease=30, limit=10)
    assert (nxt.job_id, nxt.type) == ("a", "job.canceled")  # a dead delivery holds nothing back


async def test_disabled_sinks_get_nothing_until_enabled(store: Store) -> None:
    await store.register_sink("s", "webhook", "x", now=NOW)
    await store.create_job(job())
    await store.finish("j1", Status.CANCELED, now=NOW)
    await store.fan_out("s", TERMINAL, now=NOW)
    assert await store.disable_sink("s", "HTTP 410 Gone", now=NOW)
    assert await store.claim_deliveries("me", sink="s", now=NOW, lease=30, limit=10) == []
    [sink] = await store.sinks()
    assert sink.disabled_reason == "HTTP 410 Gone"
    await store.create_job(job("j2"))
    await store.finish("j2", Status.CANCELED, now=NOW)
    assert await store.fan_out("s", TERMINAL, now=NOW) == 0  # a disabled sink keeps its position
    assert await store.enable_sink("s", now=NOW)
    assert await store.fan_out("s", TERMINAL, now=NOW) == 1
    assert len(await store.claim_deliveries("me", sink="s", now=NOW, lease=30, limit=10)) == 2


async def test_concurrent_claims_never_share_a_delivery(store: Store) -> None:
    await store.register_sink("s", "webhook", "x", now=NOW)
    for n in range(20):
        await store.create_job(job(f"j{n}"))
        await store.finish(f"j{n}", Status.CANCELED, now=NOW)
    await store.fan_out("s", TERMINAL, now=NOW)
    batches = await asyncio.gather(*(
        store.claim_deliveries(f"o{n}", sink="s", now=NOW, lease=30, limit=5) for n in range(6)
    ))
    ids = [d.id for batch in batches for d, _ in batch]
    assert len(ids) == 20 and len(set(ids)) == 20


async def test_redeliver_one_event_or_every_dead_one(store: Store) -> None:
    await store.register_sink("a", "webhook", "x", now=NOW)
    await store.register_sink("b", "redis", "y", now=NOW)
    await store.create_job(job())
    await store.finish("j1", Status.CANCELED, now=NOW)
    await store.fan_out("a", TERMINAL, now=NOW)
    [(d, evt)] = await store.claim_deliveries("me", sink="a", now=NOW, lease=30, limit=10)
    await ledger.record_attempt(store, d.id, "me", at=NOW, code=400, latency_ms=1, error="HTTP 400", state="dead",
                               next_at=None)
    assert await store.redeliver(None, failed=True, sinks_for={}, now=NOW + 5) == 1
    [pending] = await store.deliveries("pending")
    assert pending.created_at == NOW + 5 and pending.next_at == NOW + 5  # a fresh retry window
    # One event, again, to every sink that takes it (b never had a delivery: created).
    assert await store.redeliver(evt.id, sinks_for={"a": TERMINAL, "b": TERMINAL}, now=NOW + 6) == 2
    assert sorted(d.sink for d in await store.deliveries("pending")) == ["a", "b"]
    assert await store.redeliver("evt_missing", sinks_for={"a": TERMINAL}, now=NOW) == -1


async def test_prune_outbox_takes_old_events_with_their_deliveries(store: Store) -> None:
    await store.register_sink("s", "webhook", "x", now=NOW)
    for n, at in enumerate((NOW, NOW + 10, NOW + 100)):
        await store.create_job(job(f"j{n}"))
        await store.finish(f"j{n}", Status.CANCELED, now=at)
    await store.fan_out("s", TERMINAL, now=NOW)
    await store.create_job_once(job("k"), key="old", fingerprint="f", now=NOW, ttl=10)
    assert await store.prune_outbox(NOW + 50, idempotent_before=NOW + 1) == 2
    assert [e.job_id for e in await store.events_after(0)] == ["j2"]
    assert [d.job_id for d in await store.deliveries()] == ["j2"]
    _, created = await store.create_job_once(job("k2"), key="old", fingerprint="other", now=NOW + 2, ttl=3600)
    assert created  # the old key was pruned


async def test_postgres_a_later_event_waits_for_an_earlier_uncommitted_one() -> None:
    """PostgreSQL hands out sequence values before commit: without the outbox lock, b's event
    (seq 2) would be visible while a's (seq 1) is not yet, and a reader past 2 would never see 1."""
    import asyncpg

    from receiver.store import sql
    from receiver.store.postgres import PostgresStore, _drive
    from tests.pg import fresh_schema

    async with fresh_schema() as url:
        store = PostgresStore(url, pool_size=4)
        await store.open()
        conn = await asyncpg.connect(url)
        try:
            await store.create_job(job("a"))
            await store.create_job(job("b"))
            tx = conn.transaction()
            await tx.start()
            await _drive(conn, sql.finish("a", Status.CANCELED, NOW, None, None))  # written, not committed
            other = asyncio.create_task(store.finish("b", Status.CANCELED, now=NOW))
            for _ in range(500):  # until b waits on the outbox lock (bounded)
                waiting = await store._pool.fetchval(  # type: ignore[union-attr]
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                if waiting or other.done():
                    break
                await asyncio.sleep(0.01)
            assert not other.done(), "b committed its event while a's earlier one was uncommitted"
            assert await store.events_after(0) == []
            await tx.commit()
            await other
            assert [e.job_id for e in await store.events_after(0)] == ["a", "b"]
        finally:
            await conn.close()
            await store.close()


async def test_redelivering_a_delivery_in_flight_does_not_hand_it_to_a_second_relay(store: Store) -> None:
    await store.register_sink("s", "webhook", "x", now=NOW)
    await store.create_job(job())
    await store.finish("j1", Status.CANCELED, now=NOW)
    await store.fan_out("s", TERMINAL, now=NOW)
    [(delivery, evt)] = await store.claim_deliveries("first", sink="s", now=NOW, lease=30, limit=10)
    assert await store.redeliver(evt.id, sinks_for={"s": TERMINAL}, now=NOW + 1) == 1
    assert await store.claim_deliveries("second", sink="s", now=NOW + 1, lease=30, limit=10) == []  # still first's
    assert await ledger.record_attempt(store, delivery.id, "first", at=NOW + 2, code=200, latency_ms=1, error=None,
                                      state="delivered", next_at=None)

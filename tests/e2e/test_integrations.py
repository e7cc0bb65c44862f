"""End to end: the /v1 API, the event outbox and its sinks, with real `fluxhook serve` processes on
loopback, the simulator, a local webhook endpoint, Redis (127.0.0.1:6379) and NATS JetStream
(127.0.0.1:4222); PostgreSQL where replicas share a ledger. A missing service fails, never skips.

1. A job created over the API reaches `stored`; its `job.stored` event reaches an SSE client, a
   signed webhook, a Redis stream and a JetStream stream, with one event id everywhere.
2. A webhook endpoint answering 503 five times then 200 gets the same `webhook-id` six times.
   Retries back off from 5 s (and honour Retry-After), so each 503 asks for an hour and the next
   attempt is made due by `fluxhook redeliver EVT --now`: only the redeliveries cause retries.
3. An SSE client that disconnects and resumes with Last-Event-ID misses nothing, repeats nothing.
4. A receiver SIGKILLed right after committing a callback (and its event) delivers after restart.
5. Two replicas on one PostgreSQL ledger never both deliver one event; an event committed by
   either reaches SSE clients on both quickly (the gap is printed, asserted only loosely).
6. Concurrent creates with one Idempotency-Key make one job (one 201), also across replicas.

Every wait is for a condition, bounded (tests.e2e.integrations_support.wait_until).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import statistics
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from submitter.simulator import Faults
from submitter.status import Status
from tests.e2e.integrations_support import FORWARD_SECRET, Serve, Stack, stack, wait_until
from tests.e2e.support import WAIT, run_cli
from tests.pg import fresh_schema
from tests.sinks_support import NATS_URL, REDIS_URL, Reply, require_nats, require_redis

pytestmark = pytest.mark.anyio

#: The brief's bound on how late an event may reach an SSE client on the other replica.
CROSS_REPLICA_BOUND = 5.0


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        async with fresh_schema() as url:
            yield url


def when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def stored_event(s: Stack, job_id: str) -> Any:
    (event,) = [e for e in await s.rt.store.events_after(0, limit=1000, job_id=job_id) if e.type == "job.stored"]
    return event


def unlinked(envelope: dict[str, Any]) -> dict[str, Any]:
    """A delivered envelope as the outbox keeps it: without the files' links (each file must have one)."""
    files = envelope["data"]["files"]
    assert all(f["link"] and f["link_expires_at"] for f in files), files
    stripped = [{k: v for k, v in f.items() if k not in ("link", "link_expires_at")} for f in files]
    return {**envelope, "data": {**envelope["data"], "files": stripped}}


def assert_clean(*serves: Serve) -> None:
    for sv in serves:
        text = sv.log_text()
        assert "Traceback" not in text, f"{sv.name} logged a traceback:\n{text[-4000:]}"


# -- 1. one event, four sinks ----------------------------------------------------------------------


async def test_a_stored_job_event_reaches_sse_webhook_redis_and_nats(tmp_path: Path, db: str | None) -> None:
    redis = await require_redis()
    nc = await require_nats()
    js = nc.jetstream()
    token = uuid.uuid4().hex[:12]
    stream_name, subject, redis_stream = f"FHE2E_{token}", f"fhe2e.{token}.events", f"fhe2e:{token}"
    await js.add_stream(name=stream_name, subjects=[f"fhe2e.{token}.>"])
    extra = {"FLUXHOOK_REDIS_URL": REDIS_URL, "FLUXHOOK_REDIS_STREAM": redis_stream,
             "FLUXHOOK_NATS_URL": NATS_URL, "FLUXHOOK_NATS_SUBJECT": subject}
    try:
        async with stack(tmp_path, db=db, extra=extra) as s:
            (serve,) = s.serves
            await serve.start()
            async with s.sse(serve) as sse:  # connected before the submit
                created = await s.create(serve, "four sinks")
                assert created.status_code == 201, created.text
                job_id = created.json()["id"]
                assert created.headers["location"] == f"/v1/jobs/{job_id}"
                view = await s.job(serve, job_id, wait=WAIT)
                assert view["status"] == "stored" and len(view["files"]) == 1, view
                event = await stored_event(s, job_id)

                # SSE: the job's events in order, job.stored among them with the envelope as data.
                await wait_until(lambda: event.id in sse.ids(), WAIT, "job.stored on the SSE stream")
                mine = [e for e in sse.events if e.envelope["data"]["id"] == job_id]
                # Every event of the job in the outbox, in order (job.submitted is absent when the
                # callback beat the submit answer: the job went queued -> succeeded directly).
                outbox = await s.rt.store.events_after(0, job_id=job_id)
                assert [e.type for e in mine] == [e.type for e in outbox] and mine[-1].type == "job.stored"
                (seen,) = [e for e in mine if e.type == "job.stored"]
                assert seen.seq == event.seq and seen.envelope == event.envelope()

            # The webhook: Standard Webhooks headers, a signature the reference library accepts.
            await wait_until(lambda: any(h["headers"].get("webhook-id") == event.id for h in s.hooks()), WAIT,
                             "the webhook for job.stored")
            hooks = [h for h in s.hooks() if h["headers"]["webhook-id"] == event.id]
            assert len(hooks) == 1
            payload = Webhook(FORWARD_SECRET).verify(hooks[0]["body"], hooks[0]["headers"])
            assert unlinked(payload) == event.envelope() and payload["data"]["status"] == "stored"
            # Each file's link, signed at delivery, works without a key (served by this receiver).
            [file] = payload["data"]["files"]
            assert file["link"].startswith(f"{serve.url}/files/{job_id}/0?expires=")
            async with httpx.AsyncClient() as plain:
                got = await plain.get(file["link"])
            assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == file["sha256"]
            assert payload["data"]["prompt"] == "four sinks"
            assert all(h["envelope"]["type"] in {"job.stored"} for h in s.hooks())  # terminal events only

            # Redis: XADD fields id, type, data = the envelope.
            async def in_redis() -> bool:
                return any(f[b"id"].decode() == event.id for _, f in await redis.xrange(redis_stream))

            await wait_until(in_redis, WAIT, "job.stored in the Redis stream")
            entries = [f for _, f in await redis.xrange(redis_stream)]
            (entry,) = [f for f in entries if f[b"id"].decode() == event.id]
            assert entry[b"type"] == b"job.stored" and unlinked(json.loads(entry[b"data"])) == event.envelope()

            # NATS JetStream: the envelope, Nats-Msg-Id = the event id.
            psub = await js.pull_subscribe(subject, stream=stream_name)
            got: dict[str, Any] = {}

            async def in_nats() -> bool:
                try:
                    for msg in await psub.fetch(10, timeout=0.5):
                        assert msg.headers is not None
                        got[msg.headers["Nats-Msg-Id"]] = msg
                        await msg.ack()
                except TimeoutError:
                    pass
                return event.id in got

            await wait_until(in_nats, WAIT, "job.stored in the JetStream stream")
            await psub.unsubscribe()
            msg = got[event.id]
            assert unlinked(json.loads(msg.data)) == event.envelope()
            # One event id in all four places: SSE (seen), webhook, Redis, NATS.
            assert {seen.envelope["id"], hooks[0]["headers"]["webhook-id"], entry[b"id"].decode(),
                    msg.headers["Nats-Msg-Id"]} == {event.id}
            assert_clean(serve)
    finally:
        await redis.delete(redis_stream)
        await redis.aclose()
        await js.delete_stream(stream_name)
        await nc.close()


# -- 2. retries keep the webhook-id --------------------------------------------------------------


async def test_a_webhook_retried_after_five_503s_keeps_its_webhook_id(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        (serve,) = s.serves
        # Each 503 asks for an hour: the relay's own timer never fires here, only our redeliveries do.
        s.endpoint.replies.extend(Reply(503, headers={"retry-after": "3600"}) for _ in range(5))
        await serve.start()
        created = await s.create(serve, "retry me")
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        assert (await s.job(serve, job_id, wait=WAIT))["status"] == "stored"
        event = await stored_event(s, job_id)

        async def recorded(n: int) -> bool:
            (d,) = await s.rt.store.deliveries(event_id=event.id)
            return d.attempts == n and d.state == ("delivered" if n == 6 else "pending")

        for attempt in range(1, 6):
            await wait_until(lambda n=attempt: len(s.hooks()) >= n, WAIT, f"webhook attempt {attempt}")
            await wait_until(lambda n=attempt: recorded(n), WAIT, f"attempt {attempt} recorded")
            assert len(s.hooks()) == attempt  # nothing retried by itself
            code, out, err = await run_cli(s.env, "redeliver", event.id, "--now")
            assert code == 0, err
        await wait_until(lambda: len(s.hooks()) >= 6, WAIT, "the sixth attempt")
        await wait_until(lambda: recorded(6), WAIT, "the delivery recorded as delivered")

        hooks = s.hooks()
        assert len(hooks) == 6
        assert {h["headers"]["webhook-id"] for h in hooks} == {event.id}
        for h in hooks:  # each attempt is signed afresh, and verifies
            assert unlinked(Webhook(FORWARD_SECRET).verify(h["body"], h["headers"])) == event.envelope()
        code, out, err = await run_cli(s.env, "deliveries", "--event", event.id, "--attempts", "--json")
        assert code == 0, err
        (row,) = json.loads(out)
        assert row["state"] == "delivered" and row["attempts"] == 6
        assert [a["code"] for a in row["attempts_log"]] == [503] * 5 + [200]
        assert_clean(serve)


# -- 3. SSE resumption -----------------------------------------------------------------------------


async def test_sse_resumed_with_last_event_id_misses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    jobs = 20
    async with stack(tmp_path) as s:
        (serve,) = s.serves
        for i in range(jobs):  # finishing over a few seconds, so events keep coming while disconnected
            s.sim.add_rule(f"resume-{i:02d}:", Faults(runtime=0.3 + 0.12 * i))
        await serve.start()
        async with s.sse(serve) as first:
            answers = await asyncio.gather(*(s.create(serve, f"resume-{i:02d}:") for i in range(jobs)))
            assert [a.status_code for a in answers] == [201] * jobs
            ids = {a.json()["id"] for a in answers}
            await wait_until(lambda: len(first.events) >= 5, WAIT, "five events before the disconnect")
        last = first.events[-1].seq
        # Events are committed while nobody listens...
        await wait_until(lambda: _grew(s, last + 5), WAIT, "more events while disconnected")
        stored = [j for j in await s.rt.store.list_jobs(Status.STORED, limit=100) if j.id in ids]
        assert len(stored) < jobs, "every job finished before the resume: nothing was tested"
        async with s.sse(serve, last_event_id=last) as second:
            async def caught_up() -> bool:
                done = await s.rt.store.list_jobs(Status.STORED, limit=100)
                head = await s.rt.store.last_seq()
                return len([j for j in done if j.id in ids]) == jobs and bool(second.events) \
                    and second.events[-1].seq == head

            await wait_until(caught_up, 2 * WAIT, "every job stored and the resumed stream caught up")
        outbox = [e for e in await s.rt.store.events_after(0, limit=1000) if e.job_id in ids]
        got = first.events + second.events
        seqs = [e.seq for e in got]
        assert len(seqs) == len(set(seqs)), "an event came twice"
        assert seqs == sorted(seqs), "events out of order"
        assert second.events[0].seq > last
        assert [e.envelope["id"] for e in got] == [e.id for e in outbox]  # nothing missed
        assert Counter(e.type for e in outbox)["job.stored"] == jobs
        print(f"\nSSE resume: {len(first.events)} events before the disconnect, {len(second.events)} after;"
              f" {len(outbox)} in the outbox; {len(stored)} of {jobs} jobs stored at the resume")
        assert_clean(serve)


async def _grew(s: Stack, seq: int) -> bool:
    return await s.rt.store.last_seq() >= seq


# -- 4. killed between the commit and the delivery -------------------------------------------------


async def test_an_event_committed_before_a_sigkill_is_delivered_after_the_restart(tmp_path: Path) -> None:
    # One callback retry, soon: a dead receiver's callbacks are over before the next start.
    async with stack(tmp_path, callback_retries=(0.1,)) as s:
        (serve,) = s.serves
        s.sim.add_rule("fails:", Faults(runtime=0.05, outcome="error"))
        s.sim.add_rule("works:", Faults(runtime=0.05))

        # (a) The callback's commit writes `failed` and job.failed together; the process dies at once.
        await serve.start("after-callback-commit")
        created = await s.create(serve, "fails: crash")
        assert created.status_code == 201, created.text
        failed_id = created.json()["id"]
        assert await serve.died() == -signal.SIGKILL
        await s.sim.drain()
        job = await s.rt.store.get_job(failed_id)
        assert job is not None and job.status == Status.FAILED
        (failed,) = [e for e in await s.rt.store.events_after(0, job_id=failed_id) if e.type == "job.failed"]
        assert s.hooks() == []  # committed, never delivered
        assert [d for d in await s.rt.store.deliveries() if d.state == "delivered"] == []

        # (b) Restarted (the failpoint still armed for the next callback): job.failed goes out.
        await serve.start("after-callback-commit")
        await wait_until(lambda: any(h["headers"]["webhook-id"] == failed.id for h in s.hooks()), WAIT,
                         "job.failed delivered after the restart")

        # (c) A job whose success callback commits `succeeded`, then the process dies before storing.
        created = await s.create(serve, "works: crash")
        assert created.status_code == 201, created.text
        stored_id = created.json()["id"]
        assert await serve.died() == -signal.SIGKILL
        await s.sim.drain()
        job = await s.rt.store.get_job(stored_id)
        assert job is not None and job.status == Status.SUCCEEDED
        await serve.start()
        assert (await s.job(serve, stored_id, wait=WAIT))["status"] == "stored"
        event = await stored_event(s, stored_id)
        await wait_until(lambda: any(h["headers"]["webhook-id"] == event.id for h in s.hooks()), WAIT,
                         "job.stored delivered after the restart")
        ids = Counter(h["headers"]["webhook-id"] for h in s.hooks())
        assert ids[failed.id] >= 1 and ids[event.id] >= 1  # at least once
        assert set(ids) == {failed.id, event.id}
        for h in s.hooks():
            Webhook(FORWARD_SECRET).verify(h["body"], h["headers"])
        assert (s.rt.settings.results / stored_id / "0.png").exists()


# -- 5. two replicas, one ledger -------------------------------------------------------------------


async def test_two_replicas_deliver_each_event_once_and_share_sse(tmp_path: Path) -> None:
    jobs = 30
    async with fresh_schema() as db, stack(tmp_path, db=db, replicas=2,
                                            extra={"FLUXHOOK_DB_POOL": "5"}) as s:
        for i in range(jobs):
            s.sim.add_rule(f"rep-{i:02d}:", Faults(runtime=0.1 + 0.05 * (i % 10)))
        await asyncio.gather(*(sv.start() for sv in s.serves))
        async with s.sse(s.serves[0]) as sse0, s.sse(s.serves[1]) as sse1:
            answers = await asyncio.gather(*(s.create(s.serves[i % 2], f"rep-{i:02d}:") for i in range(jobs)))
            assert [a.status_code for a in answers] == [201] * jobs
            ids = {a.json()["id"] for a in answers}

            async def all_stored() -> bool:
                done = await s.rt.store.list_jobs(Status.STORED, limit=100)
                return len([j for j in done if j.id in ids]) == jobs

            await wait_until(all_stored, 2 * WAIT, f"{jobs} jobs stored")
            stored = {e.id: e for e in await s.rt.store.events_after(0, limit=1000, types=frozenset({"job.stored"}))}
            assert len(stored) == jobs
            await wait_until(lambda: set(stored) <= set(sse0.ids()) and set(stored) <= set(sse1.ids()), WAIT,
                             "every job.stored on both replicas' SSE streams")
            await wait_until(lambda: set(stored) <= {h["headers"]["webhook-id"] for h in s.hooks()}, WAIT,
                             "every job.stored delivered")
        gaps = {
            name: [e.at - when(e.envelope["created_at"]) for e in client.events if e.envelope["id"] in stored]
            for name, client in (("serve0", sse0), ("serve1", sse1))
        }
        pids = [sv.process.pid for sv in s.serves if sv.process is not None]
        senders = Counter(tuple(who) for who in s.endpoint.senders)
        # Both replicas stop (SIGTERM, drained): no attempt is in flight when we count.
        exits = [await sv.stop() for sv in s.serves]
        assert exits == [-signal.SIGTERM, -signal.SIGTERM]
        webhook_ids = Counter(h["headers"]["webhook-id"] for h in s.hooks())
        assert webhook_ids == Counter(dict.fromkeys(stored, 1)), [k for k, n in webhook_ids.items() if n > 1]
        deliveries = await s.rt.store.deliveries(limit=1000)
        assert len(deliveries) == jobs and {(d.state, d.attempts) for d in deliveries} == {("delivered", 1)}
        for d in deliveries:
            assert len(await s.rt.store.delivery_attempts(d.id)) == 1
        # No webhook's connection belonged to both processes. (A sender is unknown when its connection
        # closed before /proc was read; which replica sends how many is the scheduler's business: the
        # exactly-once above, one attempt per delivery, is the claim.)
        assert set(senders) <= {(pids[0],), (pids[1],), ()}, senders
        split = [senders[(pid,)] for pid in pids]
        print(f"\nwebhooks sent by serve0/serve1/unknown: {split[0]}/{split[1]}/{senders[()]}")
        all_gaps = gaps["serve0"] + gaps["serve1"]
        print(f"\ncommit-to-SSE gap (s) over {jobs} job.stored events: "
              + "; ".join(f"{n}: median {statistics.median(g):.3f} max {max(g):.3f}" for n, g in gaps.items()))
        assert max(all_gaps) < CROSS_REPLICA_BOUND
        assert_clean(*s.serves)


# -- 6. idempotent create under concurrent retries -------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 2], ids=["sqlite-one-serve", "postgres-two-replicas"])
async def test_concurrent_creates_with_one_idempotency_key_make_one_job(tmp_path: Path, replicas: int) -> None:
    async with fresh_schema() as pg:
        async with stack(tmp_path, db=pg if replicas == 2 else None, replicas=replicas) as s:
            await asyncio.gather(*(sv.start() for sv in s.serves))
            key = f"retry-{uuid.uuid4().hex}"
            answers = await asyncio.gather(
                *(s.create(s.serves[i % replicas], "idempotent", key=key) for i in range(10))
            )
            codes = Counter(a.status_code for a in answers)
            assert codes == Counter({201: 1, 200: 9}), [(a.status_code, a.text) for a in answers]
            assert len({a.json()["id"] for a in answers}) == 1
            for a in answers:
                assert a.headers.get("idempotent-replayed") == ("true" if a.status_code == 200 else None)
            job_id = answers[0].json()["id"]
            assert [j.id for j in await s.rt.store.list_jobs(limit=100)] == [job_id]
            # A different body under the same key is a conflict, on every replica.
            for sv in s.serves:
                other = await s.create(sv, "something else", key=key)
                assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
            assert (await s.job(s.serves[-1], job_id, wait=WAIT))["status"] == "stored"
            assert_clean(*s.serves)

"""The store reads the web UI uses (audit_events with a limit), on every backend; the listings' reads are in
test_store_listing.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.store import Event, Job, Store
from submitter.bodies import Observation
from submitter.status import Status
from tests.receiver.store.test_store import BACKENDS

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0




@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        yield backend


def job(job_id: str, created_at: float = NOW, provider: str = "bfl") -> Job:
    return Job(id=job_id, provider=provider, model="flux-dev", params={"prompt": "p"}, status=Status.QUEUED,
               created_at=created_at, deadline_at=created_at + 1800, next_check_at=created_at)


def event(key: str, job_id: str, at: float, verdict: str = "accepted:token") -> Event:
    return Event(job_id=job_id, provider="bfl", dedup_key=key, received_at=at, headers={"x": "y"},
                 body=b'{"status": "Pending"}', verdict=verdict)


async def test_audit_events_are_the_jobs_callbacks_oldest_first(store: Store) -> None:
    await store.create_job(job("a"))
    await store.create_job(job("b"))
    assert await store.audit_events("a") == []
    running = Observation("p1", Status.RUNNING, "running")
    await store.apply("a", running, now=NOW + 2, next_check_at=None, event=event("k2", "a", NOW + 2))
    await store.apply("a", running, now=NOW + 1, next_check_at=None, event=event("k1", "a", NOW + 1, "late"))
    await store.apply("b", Observation("p2", Status.RUNNING, "running"), now=NOW + 1, next_check_at=None,
                      event=event("k3", "b", NOW + 1))
    got = await store.audit_events("a")
    assert [(e["dedup_key"], e["received_at"], e["verdict"]) for e in got] == [
        ("k1", NOW + 1, "late"), ("k2", NOW + 2, "accepted:token")]
    kept = event("k1", "a", NOW + 1, "late")  # headers and body round-trip
    assert (got[0]["headers"], got[0]["body"], got[0]["provider"]) == (kept.headers, kept.body, kept.provider)
    assert isinstance(got[0]["body"], bytes)
    assert len(await store.audit_events("a", limit=1)) == 1
    assert await store.audit_events("nope") == []

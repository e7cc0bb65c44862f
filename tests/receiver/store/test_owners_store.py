"""Who created a job, and ended UI sessions: the part of the Store contract API key scopes rest on, on every backend."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.store import Store
from submitter.status import Status
from tests.receiver.store.test_store import BACKENDS, NOW, job

pytestmark = pytest.mark.anyio


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        yield backend


async def _seed(store: Store) -> None:
    for n, owner in enumerate(["ci", "ci", "web", None]):
        await store.create_job(dataclasses.replace(job(f"j{n}"), created_at=NOW + n, created_by=owner))


async def test_a_job_keeps_who_created_it(store: Store) -> None:
    await _seed(store)
    found = await store.get_job("j2")
    assert found is not None and found.created_by == "web" and found.view()["created_by"] == "web"
    assert (await store.get_job("j3")).created_by is None  # type: ignore[union-attr]


async def test_listing_by_creator(store: Store) -> None:
    await _seed(store)
    assert [j.id for j in await store.list_jobs(created_by="ci")] == ["j1", "j0"]
    assert [j.id for j in await store.list_jobs(created_by="web")] == ["j2"]
    assert [j.id for j in await store.list_jobs(created_by="nobody")] == []
    assert [j.id for j in await store.list_jobs()] == ["j3", "j2", "j1", "j0"]
    # with the other filters and keyset paging
    page = await store.list_jobs(Status.QUEUED, 1, created_by="ci")
    assert [j.id for j in page] == ["j1"]
    rest = await store.list_jobs(Status.QUEUED, 5, created_by="ci", before=(page[-1].created_at, page[-1].id))
    assert [j.id for j in rest] == ["j0"]


async def test_events_carry_and_filter_by_creator(store: Store) -> None:
    await _seed(store)
    for n in range(4):
        await store.finish(f"j{n}", Status.CANCELED, now=NOW + 10 + n)
    every = await store.events_after(0)
    assert [(e.job_id, e.created_by) for e in every] == [("j0", "ci"), ("j1", "ci"), ("j2", "web"), ("j3", None)]
    assert [e.data["created_by"] for e in every] == ["ci", "ci", "web", None]
    assert [e.job_id for e in await store.events_after(0, created_by="ci")] == ["j0", "j1"]
    assert [e.job_id for e in await store.events_after(every[0].seq, created_by="ci")] == ["j1"]
    assert [e.job_id for e in await store.events_after(0, created_by="web", types=frozenset({"job.canceled"}))] \
        == ["j2"]


async def test_an_ended_session_stays_ended_until_it_would_have_expired(store: Store) -> None:
    assert not await store.session_ended("a" * 64)
    await store.end_session("a" * 64, expires_at=NOW + 100, now=NOW)
    await store.end_session("a" * 64, expires_at=NOW + 100, now=NOW)  # twice: no error
    assert await store.session_ended("a" * 64)
    assert not await store.session_ended("b" * 64)
    # a later logout clears the rows of cookies that have expired by themselves, and only those
    await store.end_session("b" * 64, expires_at=NOW + 500, now=NOW + 200)
    assert not await store.session_ended("a" * 64)
    assert await store.session_ended("b" * 64)


async def test_summaries_and_provider_figures_by_creator(store: Store) -> None:
    await _seed(store)
    assert [s.id for s in await store.job_summaries(created_by="ci")] == ["j1", "j0"]
    assert [s.created_by for s in await store.job_summaries()] == [None, "web", "ci", "ci"]
    summary = await store.get_summary("j2")
    assert summary is not None and summary.created_by == "web" and summary.view()["created_by"] == "web"
    every = await store.provider_stats((NOW - 10,))
    assert [(s.provider, s.jobs) for s in every] == [("bfl", 4)]
    ci = await store.provider_stats((NOW - 10,), created_by="ci")
    assert [(s.provider, s.jobs) for s in ci] == [("bfl", 2)]
    assert await store.provider_stats((NOW - 10,), created_by="nobody") == []

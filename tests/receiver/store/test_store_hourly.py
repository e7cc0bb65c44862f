"""The provider panel's charts (Store.provider_hourly), on every backend: the database's hourly buckets and
percentiles are what counting the jobs in Python gives, honour the cap and the creator filter."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.store import Job, ProviderHour, Store
from submitter.status import Status
from tests.receiver.store.test_store import BACKENDS
from tests.receiver.store.test_store_listing import NOW, job, seed

pytestmark = pytest.mark.anyio

DAY = 86_400.0
FAILURES = {Status.FAILED, Status.MODERATED, Status.EXPIRED}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        yield backend


def by_hand(jobs: list[Job], since: float, hours: int, limit: int) -> list[ProviderHour]:
    recent = sorted((j for j in jobs if j.created_at >= since), key=lambda j: (j.created_at, j.id),
                    reverse=True)[:limit]
    buckets: dict[tuple[str, int], list[Job]] = {}
    for j in recent:
        h = min(hours - 1, int((j.created_at - since) // 3600))
        buckets.setdefault((j.provider, h), []).append(j)

    def percentile(values: list[float], q: int) -> float | None:
        ordered = sorted(values)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if values else None

    out = []
    for (provider, h), mine in sorted(buckets.items()):
        took = [j.updated_at - j.created_at for j in mine if j.status == Status.STORED and j.updated_at is not None]
        out.append(ProviderHour(
            provider=provider, hour=since + h * 3600, jobs=len(mine),
            callbacks=sum(1 for j in mine if j.callback_at is not None),
            rescued=sum(1 for j in mine if j.callback_at is None and j.polls > 0),
            failures=sum(1 for j in mine if j.status in FAILURES),
            to_artifact={q: v for q in (50, 95) if (v := percentile(took, q)) is not None}))
    return out


@pytest.mark.parametrize("limit", [10_000, 50])
async def test_hourly_figures_are_the_jobs_counted_by_hour(store: Store, limit: int) -> None:
    await seed(store, 240)
    expected = by_hand(await store.list_jobs(limit=1000), NOW - DAY, 24, limit)
    got = await store.provider_hourly(NOW - DAY, limit=limit)
    assert got == expected
    assert {p.provider for p in got} == {"bfl", "replicate", "deerapi"}
    assert {p.hour for p in got} <= {NOW - DAY + h * 3600 for h in range(24)}
    assert any(p.to_artifact for p in got) and any(p.rescued for p in got) and any(p.failures for p in got)
    if limit == 50:
        assert sum(p.jobs for p in got) == 50


async def test_an_hour_boundary_belongs_to_the_hour_it_starts(store: Store) -> None:
    since = NOW - DAY
    for name, at in (("a", since), ("b", since + 3599.5), ("c", since + 3600), ("d", NOW + 10), ("old", since - 1)):
        await store.create_job(job(name, at))
    got = await store.provider_hourly(since)
    assert [(p.hour - since, p.jobs) for p in got] == [(0, 2), (3600, 1), (23 * 3600, 1)]
    assert [(p.hour - since, p.jobs) for p in await store.provider_hourly(since, hours=1)] == [(0, 4)]
    assert await store.provider_hourly(since, hours=0) == []
    with pytest.raises(ValueError, match="percentiles"):
        await store.provider_hourly(since, quantiles=(0,))


async def test_hourly_figures_of_one_key(store: Store) -> None:
    assert await store.provider_hourly(NOW - DAY) == []
    for n, owner in enumerate(["ci", "ci", "web", None]):
        await store.create_job(dataclasses.replace(job(f"j{n}", NOW - 10 + n), created_by=owner))
    assert sum(p.jobs for p in await store.provider_hourly(NOW - DAY)) == 4
    assert [p.jobs for p in await store.provider_hourly(NOW - DAY, created_by="ci")] == [2]
    assert await store.provider_hourly(NOW - DAY, created_by="nobody") == []

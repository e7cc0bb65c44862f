"""The listings' reads (job_summaries, get_summary, provider_stats), on every backend: summaries carry what
a listing shows and never the params; the provider panel's figures, computed by the database, are the
ones the panel computed from the jobs themselves before."""

from __future__ import annotations

import math
import random
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from receiver.store import Job, JobSummary, ProviderStats, Store
from submitter.status import Status
from tests import ledger
from tests.receiver.store.test_store import BACKENDS

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
MB = 1_000_000


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        yield backend


def job(job_id: str, created_at: float = NOW, provider: str = "bfl", params: dict[str, Any] | None = None,
        **kw: Any) -> Job:
    return Job(id=job_id, provider=provider, model="flux-dev", params={"prompt": "p"} if params is None else params,
               status=Status.QUEUED, created_at=created_at, deadline_at=created_at + 1800, next_check_at=created_at,
               **kw)


async def test_summaries_list_like_list_jobs(store: Store) -> None:
    for n in range(7):
        await store.create_job(job(f"j{n}", NOW + n // 2, provider=("bfl", "replicate")[n % 2],
                                   metadata={"n": n}))
    await store.finish("j3", Status.FAILED, now=NOW + 10, reason="boom")
    for kw in ({}, {"status": Status.FAILED}, {"provider": "bfl"}, {"limit": 3}, {"before": (NOW + 2, "j5")},
               {"provider": "replicate", "before": (NOW + 3, "j6"), "limit": 2}):
        jobs = await store.list_jobs(**kw)
        summaries = await store.job_summaries(**kw)
        assert [s.id for s in summaries] == [j.id for j in jobs], kw
        for s, j in zip(summaries, jobs, strict=True):
            assert isinstance(s, JobSummary)
            assert s.view() == j.view()  # the API's view of a summary is the job's
            assert (s.status, s.polls, s.callback_at, s.progress, s.prompt) == (j.status, j.polls, j.callback_at,
                                                                              j.progress, "p")
    assert await store.get_summary("j3") == (await store.job_summaries(Status.FAILED))[0]
    assert (await store.get_summary("j3") or job("x")).error == "boom"
    assert await store.get_summary("nope") is None


@pytest.mark.parametrize(("prompt", "shown"), [
    ("a" * 200, "a" * 200),
    ("é" * 201, "é" * 199 + "…"),
    ("x" * 5000, "x" * 199 + "…"),
    ("", None),
    (7, None),
    ({"text": "not a string"}, None),
])
async def test_a_summary_carries_the_prompt_cut_by_the_database(store: Store, prompt: Any, shown: str | None) -> None:
    await store.create_job(job("a", params={"prompt": prompt, "seed": 1}))
    await store.create_job(job("b", params={"seed": 1}))
    assert [(s.id, s.prompt) for s in await store.job_summaries()] == [("b", None), ("a", shown)]
    assert not hasattr(await store.get_summary("a"), "params")


async def test_a_listing_never_reads_params(store: Store) -> None:
    # A 5 MB prompt stays in the row (prompts are not moved out), and so do 5 MB of small strings: a summary
    # must not bring either into this process.
    await store.create_job(job("big", params={"prompt": "p" * (5 * MB), "tiles": ["t" * 1000] * 5000}))
    await store.create_job(job("small", NOW + 1))
    tracemalloc.start()
    try:
        summaries = await store.job_summaries()
        one = await store.get_summary("big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [s.id for s in summaries] == ["small", "big"] and one == summaries[1]
    assert summaries[1].prompt == "p" * 199 + "…"
    assert peak < MB // 2, f"listing two jobs allocated {peak:,} bytes at the peak"


# -- the provider panel ------------------------------------------------------------------------------------------


def old_panel(jobs: list[Job], since: tuple[float, ...], limit: int) -> list[ProviderStats]:
    """What the provider panel computed from the jobs themselves before (receiver/web/ui/providers.py at
    61f5476): the newest `limit` jobs created since the earliest start, counted in Python."""
    recent = sorted((j for j in jobs if j.created_at >= min(since)), key=lambda j: (j.created_at, j.id),
                    reverse=True)[:limit]

    def percentile(values: list[float], q: float) -> float | None:
        ordered = sorted(values)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if values else None

    out = []
    for start in since:
        for name in sorted({j.provider for j in recent if j.created_at >= start}):
            mine = [j for j in recent if j.provider == name and j.created_at >= start]
            stored = [j for j in mine if j.status == Status.STORED and j.updated_at is not None]
            created = [j.updated_at - j.created_at for j in stored if j.updated_at is not None]
            submitted = [j.updated_at - j.submitted_at for j in stored
                         if j.updated_at is not None and j.submitted_at is not None]
            statuses: dict[str, int] = {}
            for j in mine:
                statuses[str(j.status)] = statuses.get(str(j.status), 0) + 1
            out.append(ProviderStats(
                provider=name, since=start, statuses=statuses,
                callbacks=sum(1 for j in mine if j.callback_at is not None),
                rescued=sum(1 for j in mine if j.callback_at is None and j.polls > 0),
                from_created={q: v for q in (50, 95) if (v := percentile(created, q)) is not None},
                from_submitted={q: v for q in (50, 95) if (v := percentile(submitted, q)) is not None},
            ))
    return out


async def seed(store: Store, n: int, now: float = NOW) -> None:
    """`n` jobs of three providers over the last two days, in every status, some with callbacks, some
    polled, some never submitted; durations with ties."""
    rng = random.Random(7)
    for i in range(n):
        created = now - rng.choice((30.0, 600.0, 3599.0, 3600.0, 7200.0, 86_000.0, 86_400.0, 90_000.0,
                                    rng.uniform(0, 172_800)))
        await store.create_job(job(f"fh_{i:04d}", created, provider=("bfl", "replicate", "deerapi")[i % 3]))
        submitted = None if rng.random() < 0.2 else created + rng.choice((0.5, 1.0, rng.uniform(0, 30)))
        updated = created + rng.choice((2.0, 3.0, 3.0, rng.uniform(0, 900)))
        await ledger.write(
            store, "UPDATE jobs SET status = ?, submitted_at = ?, updated_at = ?, callback_at = ?, polls = ?"
            " WHERE id = ?",
            (str(rng.choice(list(Status))), submitted, updated,
             None if rng.random() < 0.5 else updated, rng.choice((0, 0, 1, 3)), f"fh_{i:04d}"),
        )


@pytest.mark.parametrize("limit", [10_000, 50])
async def test_provider_stats_are_what_the_panel_computed_from_the_jobs(store: Store, limit: int) -> None:
    await seed(store, 240)
    since = (NOW - 3600, NOW - 86_400)
    expected = old_panel(await store.list_jobs(limit=1000), since, limit)
    got = await store.provider_stats(since, limit=limit)
    assert got == expected
    assert {s.provider for s in got} == {"bfl", "replicate", "deerapi"}
    assert any(s.from_created for s in got) and any(s.rescued for s in got) and any(s.callbacks for s in got)
    if limit == 50:  # the cap counts the newest jobs only, as before
        assert sum(s.jobs for s in got if s.since == NOW - 86_400) == 50


async def test_provider_stats_of_an_empty_window(store: Store) -> None:
    assert await store.provider_stats((NOW - 3600,)) == []
    await store.create_job(job("old", NOW - 7200))
    assert await store.provider_stats((NOW - 3600,)) == []
    assert await store.provider_stats(()) == []
    with pytest.raises(ValueError, match="percentiles"):
        await store.provider_stats((NOW,), quantiles=(0,))

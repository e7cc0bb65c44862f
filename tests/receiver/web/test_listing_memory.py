"""Listings cost memory by what they show, not by what the jobs carry (security review, issue 19, finding
1): GET /v1/jobs, /ui/jobs, the gallery, the provider panel and the UI's live frames read summaries and
aggregates, never a job's params; the API listing's contract is unchanged and the provider panel shows
the numbers the old code computed from the jobs themselves."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.store import Job, Store
from receiver.web.ui import providers
from receiver.web.ui.gallery import _frames
from receiver.web.ui.providers import FAILURES, WINDOWS, percentile, seconds
from submitter.bodies import Observation
from submitter.status import Status
from tests.harness import Harness, harness
from tests.receiver.store.test_store import BACKENDS
from tests.receiver.store.test_store_listing import seed

pytestmark = pytest.mark.anyio

KEY = "list-key-0123456789abcdef"
MB = 1_000_000
#: 5 MB that stay in the job's row whatever large inputs are moved out: the prompt (never moved) and
#: thousands of small strings (each under the inline limit).
HEAVY = {"prompt": "a heavy fox " + "p" * (3 * MB), "tiles": ["t" * 1000] * 2000}


@contextlib.asynccontextmanager
async def listing_harness(tmp_path: Path, kind: str) -> AsyncIterator[Harness]:
    integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(KEY))
    async with BACKENDS[kind](tmp_path) as store, harness(tmp_path, store=store, integrations=integrations) as h:
        h.client.headers.update({"authorization": f"Bearer {KEY}"})
        yield h


@pytest.fixture(params=sorted(BACKENDS))
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with listing_harness(tmp_path, request.param) as harnessed:
        yield harnessed


async def stored_job(store: Store, job_id: str, at: float, params: dict[str, Any]) -> None:
    """A job stored with one file (its bytes are not needed: pages only link to it)."""
    await store.create_job(Job(id=job_id, provider="bfl", model="flux-dev", params=params, status=Status.QUEUED,
                               created_at=at, deadline_at=at + 1800, metadata={"n": job_id}))
    await store.record_submit(job_id, f"task-{job_id}", None, now=at, next_check_at=None)
    await store.apply(job_id, Observation(f"task-{job_id}", Status.SUCCEEDED, "ready", urls=("https://x/0.png",)),
                      now=at + 1, next_check_at=None, expires=(at + 600,))
    await store.store_file(job_id, 0, path=f"{job_id}/0.png", size=600, sha256="0" * 64, content_type="image/png")
    await store.finish(job_id, Status.STORED, now=at + 2)


async def peak_of(h: Harness, path: str) -> tuple[int, str]:
    """The peak of Python memory allocated while the receiver answers `path` (and the answer)."""
    tracemalloc.start()
    try:
        answer = await h.client.get(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 200, (path, answer.status_code)
    return peak, answer.text


async def test_listings_never_load_params(h: Harness) -> None:
    now = h.clock.now
    for n in range(3):
        await stored_job(h.rt.store, f"fh_heavy{n}", now - 60 + n, HEAVY)
    await stored_job(h.rt.store, "fh_light", now - 100, {"prompt": "a light fox"})
    for path in ("/v1/jobs?limit=200", "/ui/jobs", "/ui", "/ui/providers", "/ui/jobs?q=fh_heavy1"):
        await h.client.get(path)  # warm: templates compiled, statements prepared
        peak, text = await peak_of(h, path)
        # 9 MB of prompt in the ledger: the old code read every byte of it into this process, twice over.
        assert peak < MB, f"{path}: {peak:,} bytes at the peak"
        assert "p" * 200 not in text and "tttt" not in text, path
        if path.startswith("/v1/"):
            assert '"id":"fh_heavy1"' in text, path  # the API's views have no params (they never had)
        elif path != "/ui/providers":
            assert "a heavy fox ppp" in text, path
    # The live frames read the same summary.
    frames = _frames(h.rt, 0)
    try:
        assert await anext(frames) == "retry: 2000\n\n"
        frame = await anext(frames)
    finally:
        await frames.aclose()
    assert '"prompt":"a heavy fox ppp' in frame and "p" * 200 not in frame


async def test_the_api_listing_shows_each_job_as_its_own_view(h: Harness) -> None:
    now = h.clock.now
    for n in range(5):
        await stored_job(h.rt.store, f"fh_job{n}", now - 10 * n, {"prompt": f"fox {n}"})
    await h.rt.store.create_job(Job(id="fh_queued", provider="bfl", model="flux-dev", params={"prompt": "q"},
                                    status=Status.QUEUED, created_at=now, deadline_at=now + 1800))
    await h.rt.store.finish("fh_job3", Status.FAILED, now=now, reason="late")
    first = (await h.client.get("/v1/jobs?limit=4")).json()
    rest = (await h.client.get(f"/v1/jobs?limit=4&cursor={first['next_cursor']}")).json()
    assert rest["next_cursor"] is None
    listed = first["jobs"] + rest["jobs"]
    assert [j["id"] for j in listed] == ["fh_queued", "fh_job0", "fh_job1", "fh_job2", "fh_job3", "fh_job4"]
    for job in listed:
        assert job == (await h.client.get(f"/v1/jobs/{job['id']}")).json()
    assert set(listed[1]) == {"id", "provider", "model", "status", "error", "note", "metadata", "provider_job_id",
                              "created_by", "created_at", "updated_at", "submitted_at", "files"}
    assert listed[1]["files"][0]["url"] == "/v1/jobs/fh_job0/files/0"


# -- the provider panel: the numbers the old code computed ----------------------------------------------------------


def old_rows(jobs: list[Job], now: float, limit: int) -> list[list[str]]:
    """The panel's table as receiver/web/ui/providers.py computed it at 61f5476, from the jobs themselves;
    since issue 21 only providers with jobs in the last day have rows."""
    longest = max(w for _, w in WINDOWS)
    jobs = sorted((j for j in jobs if j.created_at >= now - longest), key=lambda j: (j.created_at, j.id),
                  reverse=True)[:limit]
    rows = []
    for name in sorted({j.provider for j in jobs}):
        for label, window in WINDOWS:
            mine = [j for j in jobs if j.provider == name and j.created_at >= now - window]
            stored = [j for j in mine if j.status == Status.STORED and j.updated_at is not None]
            from_created = [j.updated_at - j.created_at for j in stored if j.updated_at is not None]
            from_submitted = [j.updated_at - j.submitted_at for j in stored
                              if j.updated_at is not None and j.submitted_at is not None]
            rows.append([
                name, label, str(len(mine)), str(sum(1 for j in mine if j.callback_at is not None)),
                str(sum(1 for j in mine if j.callback_at is None and j.polls > 0)), str(len(stored)),
                str(sum(1 for j in mine if j.status in FAILURES)),
                seconds(percentile(from_created, 50)), seconds(percentile(from_created, 95)),
                seconds(percentile(from_submitted, 50)), seconds(percentile(from_submitted, 95)),
            ])
    return rows


def table(html: str) -> list[list[str]]:
    body = html.split('<table id="providers">', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.DOTALL) for row in body.split("</tr>")[:-1]]


@pytest.mark.parametrize("limit", [providers.PANEL_JOBS, 60])
async def test_provider_panel_shows_what_the_old_code_computed(
    h: Harness, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers, "PANEL_JOBS", limit)
    await seed(h.rt.store, 300, h.clock.now)
    page = await h.client.get("/ui/providers")
    assert page.status_code == 200
    expected = old_rows(await h.rt.store.list_jobs(limit=1000), h.clock.now, limit)
    assert table(page.text) == expected
    assert len(expected) == 2 * len({"bfl", "replicate", "deerapi"})
    assert ("Only the newest" in page.text) == (limit == 60)

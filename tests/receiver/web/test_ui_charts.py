"""The provider panel's charts (inline SVG, server-rendered): drawn from the database's hourly figures,
per provider with jobs only, an empty state without jobs, nothing the page's CSP would block."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.store import ProviderHour
from receiver.web.ui.charts import HOURS, charts_of, day_start
from submitter.status import Status
from tests.harness import Harness
from tests.receiver.web.test_ui import login, make_job, ui_harness

pytestmark = pytest.mark.anyio


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with ui_harness(tmp_path) as harnessed:
        yield harnessed


def chart(html: str, title: str) -> str:
    """The <svg> of the chart titled `title`."""
    found = re.search(rf'<svg [^>]*>\s*<title id="[^"]+">{re.escape(title)}</title>.*?</svg>', html, re.S)
    assert found is not None, title
    return found[0]


async def test_the_panel_draws_each_provider_with_jobs(h: Harness) -> None:
    await make_job(h)
    await make_job(h, until=Status.SUBMITTED, params={"prompt": "held"})
    await login(h)
    page = await h.client.get("/ui/providers")
    assert page.status_code == 200
    html = page.text
    assert [m for m in re.findall(r"<h2 [^>]*>([^<]+)</h2>", html)] == ["bfl"]  # deerapi, replicate: no jobs
    assert html.count("<svg ") == 4
    jobs = chart(html, "bfl: Jobs created")
    assert len(re.findall(r"<rect class=\"bar-jobs\"", jobs)) == 1 and ": 2 jobs</title>" in jobs
    assert "2 jobs in the last 24 hours" in jobs
    callbacks = chart(html, "bfl: Callbacks arrived vs rescued by poll")
    assert ": 1 callbacks arrived</title>" in callbacks
    timing = chart(html, "bfl: Time to artifact (p50, p95)")
    assert '<circle class="p50"' in timing and '<circle class="p95"' in timing
    assert "<rect" not in chart(html, "bfl: Failures")
    # Nothing the CSP (style-src 'self', script-src 'self') would refuse: no inline style, no script.
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    assert "style=" not in html and "<script" not in html and "<style" not in html


async def test_the_panel_without_jobs_says_so(h: Harness) -> None:
    await login(h)
    html = (await h.client.get("/ui/providers")).text
    assert 'id="no-jobs"' in html and "<svg" not in html and 'id="providers"' not in html


def test_charts_scale_and_stack_by_hour() -> None:
    start = day_start(1_800_000_000.0)
    assert start % 3600 == 0 and 1_800_000_000.0 - start < HOURS * 3600
    rows = [ProviderHour("bfl", start, 3, 1, 2, 0, {50: 2.0, 95: 90.0}),
            ProviderHour("bfl", start + 23 * 3600, 7, 4, 0, 1, {})]
    jobs, callbacks, timing, failures = charts_of(rows, start)["bfl"]
    assert jobs.top == "10" and [round(s.height) for s in jobs.shapes] == [18, 42]
    assert jobs.shapes[1].x > jobs.shapes[0].x
    stacked = [(s.css, round(s.y), round(s.height)) for s in callbacks.shapes]
    assert stacked == [("bar-callbacks", 48, 12), ("bar-rescued", 24, 24), ("bar-callbacks", 12, 48)]
    assert timing.top == "1.7 min" and [s.css for s in timing.shapes] == ["p50", "p95"]
    assert [s.title.split(": ")[1] for s in failures.shapes] == ["1 failures"]
    assert charts_of([], start) == {}

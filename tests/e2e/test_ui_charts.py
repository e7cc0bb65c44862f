"""The provider panel's charts, the jobs table on a phone and the gallery's larger view, in Debian's
Chromium (as tests/e2e/test_ui.py): charts render without jobs (an empty state) and with them; at 390 px
the jobs table, the panel and the gallery have no horizontal scroll."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from playwright.async_api import Page

from receiver.cli.demo import PROMPTS
from receiver.store import Job
from submitter.status import Status
from tests.e2e.test_ui import ARTIFACTS, ROOT, TIMEOUT_MS, log_in, ui_stack

pytestmark = pytest.mark.anyio

PHONE = {"width": 390, "height": 844}
LONG_ERROR = "the provider refused the request: " + "quota_exceeded_for_organisation_" * 6


async def horizontal_overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0: no horizontal scroll)."""
    width: int = await page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    return width


async def test_charts_the_jobs_table_on_a_phone_and_the_larger_view(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with ui_stack(tmp_path) as s:
        context = await s.context()
        page = await context.new_page()
        await log_in(page)

        # No jobs: the panel says so and draws nothing.
        await s.goto(page, "/ui/providers", "providers-empty")
        assert await page.locator("#no-jobs").is_visible()
        assert await page.locator("svg").count() == 0
        await page.screenshot(path=ARTIFACTS / "providers-empty.png", full_page=True)

        for seed, (provider, model, prompt) in enumerate(PROMPTS):
            await s.submit(provider, model, prompt, seed)
        now = time.time()
        await s.rt.store.create_job(Job(id="fh_failed_e2e", provider="bfl", model="flux-dev",
                                        params={"prompt": "a refused prompt"}, status=Status.QUEUED,
                                        created_at=now, deadline_at=now + 1800, next_check_at=now + 1800))
        await s.rt.store.finish("fh_failed_e2e", Status.FAILED, now=now, reason=LONG_ERROR)

        # With jobs: four charts per provider with jobs; providers without jobs are not drawn.
        await s.goto(page, "/ui/providers", "providers")
        headings = await page.locator("section.provider h2").all_inner_texts()
        assert headings == sorted({p for p, _, _ in PROMPTS}), headings
        assert await page.locator("section.provider svg").count() == 4 * len(headings)
        bfl = page.locator("section.provider").filter(has=page.locator("h2", has_text="bfl"))
        bars = bfl.locator("figure.chart").nth(0).locator("rect.bar-jobs")
        assert await bars.count() >= 1
        box = await bars.first.bounding_box()
        assert box is not None and box["height"] > 0 and box["width"] > 0
        assert await bfl.locator("rect.bar-rescued").count() >= 1  # the lost callback, rescued by polling
        assert await bfl.locator("rect.bar-failures").count() == 1
        assert await bfl.locator("circle.p95").count() >= 1
        await page.screenshot(path=ARTIFACTS / "providers-charts.png", full_page=True)
        if os.environ.get("FLUXHOOK_UPDATE_SCREENSHOT"):  # README's picture: refreshed on request only
            await page.screenshot(path=ROOT / "docs" / "providers.png", full_page=True)
        await context.close()

        # A phone: no horizontal scroll on the jobs table (the error column, unwrapped dates), the panel
        # and the gallery; the larger view of an image opens without script and shows its job's facts.
        phone = await s.browser.new_context(base_url=s.url, viewport=PHONE)  # type: ignore[arg-type]
        phone.set_default_timeout(TIMEOUT_MS)
        page = await phone.new_page()
        await log_in(page)
        await s.goto(page, "/ui/jobs", "jobs-phone")
        assert await page.locator("#jobs tbody tr").count() == len(PROMPTS) + 1
        assert LONG_ERROR[:40] in await page.locator("#jobs").inner_text()
        created = page.locator("#jobs tbody time").first
        box = await created.bounding_box()
        assert box is not None and box["height"] < 30, box  # one line
        assert await horizontal_overflow(page) == 0
        await page.screenshot(path=ARTIFACTS / "jobs-phone.png", full_page=True)
        for path in ("/ui/providers", "/ui"):
            await s.goto(page, path, path)
            assert await horizontal_overflow(page) == 0, path
        await page.locator("#gallery li a[title='Larger view']").first.click()
        view = page.locator(".lightbox:target")
        await view.wait_for(state="visible")
        assert await view.locator("img.large").evaluate("i => i.complete && i.naturalWidth") > 0
        facts = await view.locator("dl").inner_text()
        assert "Provider" in facts and "Stored" in facts and "fh_" in facts
        await page.screenshot(path=ARTIFACTS / "gallery-view-phone.png")
        await view.get_by_role("link", name="Close").click()
        await view.wait_for(state="hidden")
        await phone.close()

"""The web UI in a real browser: Debian's Chromium driven by Playwright, against a real uvicorn on loopback
with the provider simulator. Never skipped: without /usr/bin/chromium or playwright these tests fail.

Screenshots of every page go to tests/e2e/artifacts/; the gallery made from the demo's prompts is also
written to docs/gallery.png (the README shows it) when FLUXHOOK_UPDATE_SCREENSHOT is set.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from receiver.cli.demo import PROMPTS  # the demo's jobs: the counts below follow from them
from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from submitter.simulator import Faults, Simulator
from submitter.status import Status
from tests.e2e.support import env_for, wait_for_status

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
KEY = "ui-e2e-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 30_000


@dataclass
class UiStack:
    url: str
    rt: Runtime
    browser: Browser
    jobs: dict[str, str] = field(default_factory=dict)  # prompt -> job id
    loads: dict[str, float] = field(default_factory=dict)  # page -> milliseconds to load

    async def context(self, **options: object) -> BrowserContext:
        context = await self.browser.new_context(base_url=self.url, viewport={"width": 1100, "height": 800},
                                                 **options)  # type: ignore[arg-type]
        context.set_default_timeout(TIMEOUT_MS)
        return context

    async def submit(self, provider: str, model: str, prompt: str, seed: int = 0) -> str:
        job = await submit(self.rt, provider, model, {"prompt": prompt, "seed": seed})
        done = await wait_for_status(self.rt.store, job.id)
        assert done.status == Status.STORED, (done.status, done.error)
        self.jobs[prompt] = job.id
        return job.id

    async def goto(self, page: Page, path: str, name: str) -> None:
        started = time.perf_counter()
        answer = await page.goto(path, wait_until="load")
        self.loads[name] = (time.perf_counter() - started) * 1000
        assert answer is not None and answer.ok, (path, answer and answer.status)


def test_chromium_and_playwright_are_installed() -> None:
    """Stated on its own so a missing browser reads plainly (the import above fails without playwright)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (the UI tests need it)"


@contextlib.asynccontextmanager
async def ui_stack(tmp_path: Path) -> AsyncIterator[UiStack]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (the UI tests need it)"
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=(0.05, 0.1))
    sim.add_rule("callback lost", Faults(drop=True, runtime=0.05))
    sim.add_rule("two outputs", Faults(outputs=2, runtime=0.05))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings.from_env({**env_for(tmp_path, sim_url, public_url), "FLUXHOOK_API_KEYS": KEY,
                                      "FLUXHOOK_SSE_HEARTBEAT": "1"})
        settings.results.mkdir(parents=True, exist_ok=True)
        app = create_app(settings)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(serve_in_background(app, sock, settings=settings))
            rt = await stack.enter_async_context(Runtime.open(settings))
            playwright = await stack.enter_async_context(async_playwright())
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            stack.push_async_callback(browser.close)  # before the server stops: open event streams end first
            yield UiStack(public_url, rt, browser)
        await sim.aclose()


async def log_in(page: Page) -> None:
    await page.goto("/ui")
    assert "/ui/login" in page.url
    await page.get_by_label("API key").fill(KEY)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url("**/ui")


async def images_loaded(page: Page, selector: str = "#gallery img") -> list[int]:
    await page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector)
    widths: list[int] = await page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")
    return widths


async def test_the_ui_in_a_browser(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with ui_stack(tmp_path) as s:
        for seed, (provider, model, prompt) in enumerate(PROMPTS):
            await s.submit(provider, model, prompt, seed)
        context = await s.context()
        page = await context.new_page()

        # Login with the key; the cookie is HttpOnly and not the key.
        await log_in(page)
        (cookie,) = await context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]

        # The gallery shows every stored image, loaded.
        await s.goto(page, "/ui", "gallery")
        widths = await images_loaded(page)
        assert len(widths) == len(PROMPTS) + 1 and all(w > 0 for w in widths)  # one job has two outputs
        assert await page.locator("#gallery img").first.get_attribute("alt") == PROMPTS[-1][2]
        await page.screenshot(path=ARTIFACTS / "gallery.png", full_page=True)
        if os.environ.get("FLUXHOOK_UPDATE_SCREENSHOT"):  # README's picture: refreshed on request only
            (ROOT / "docs").mkdir(exist_ok=True)
            await page.screenshot(path=ROOT / "docs" / "gallery.png", full_page=True)

        # A job stored while the page is open appears without reload.
        marker = await page.evaluate("() => (window.__marker = Math.random())")
        live = await s.submit("bfl", "flux-dev", "a hummingbird, watercolour (arrived live)", 99)
        new = page.locator(f'#gallery li[data-job="{live}"] img')
        await new.wait_for(state="visible")
        assert await page.evaluate("() => window.__marker") == marker  # the same document: no reload
        assert (await images_loaded(page, f'#gallery li[data-job="{live}"] img')) [0] > 0
        assert await page.locator("#gallery li").first.get_attribute("data-job") == live
        assert "arrived live" in (await new.get_attribute("alt") or "")
        await page.screenshot(path=ARTIFACTS / "gallery-live.png", full_page=True)

        # The job table: filters by status and provider, search by id.
        await s.goto(page, "/ui/jobs", "jobs")
        assert await page.locator("#jobs tbody tr").count() == len(PROMPTS) + 1
        await page.get_by_label("Provider").select_option("deerapi")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url("**/ui/jobs?*provider=deerapi*")
        rows = page.locator("#jobs tbody tr")
        assert await rows.count() == 1 and "deerapi" in await rows.first.inner_text()
        await page.get_by_label("Provider").select_option("")
        await page.get_by_label("Status").select_option("failed")
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url("**/ui/jobs?status=failed*")
        assert "No jobs match." in await page.locator("#jobs tbody").inner_text()
        await page.get_by_label("Status").select_option("stored")
        await page.get_by_label("Job id").fill(live)
        await page.get_by_role("button", name="Filter").click()
        await page.wait_for_url(f"**q={live}*")
        assert await page.locator("#jobs tbody tr").count() == 1
        await page.screenshot(path=ARTIFACTS / "jobs.png", full_page=True)

        # A job page: its timeline and its images.
        await page.get_by_role("link", name=live).click()
        await page.wait_for_url(f"**/ui/jobs/{live}")
        s.loads["job"] = await page.evaluate("() => performance.getEntriesByType('navigation')[0].duration")
        timeline = await page.locator("#timeline").inner_text()
        # (job.submitted is absent when the callback beat the submit answer; tests/receiver/web/test_ui.py checks the order.)
        for step in ("created", "submitted", "callback received", "event job.stored"):
            assert step in timeline, step
        assert all(w > 0 for w in await images_loaded(page, "main img"))
        await page.screenshot(path=ARTIFACTS / "job.png", full_page=True)

        # The provider panel: the lost callback was rescued by polling.
        await s.goto(page, "/ui/providers", "providers")
        bfl_hour = page.locator("#providers tbody tr").filter(has_text="bfl").filter(has_text="last hour")
        cells = await bfl_hour.locator("td").all_inner_texts()
        # window, jobs, callbacks arrived, rescued by poll, stored, failures, p50/p95 x2
        assert cells[1:6] == ["3", "2", "1", "3", "0"], cells
        assert cells[6].endswith(" s") and cells[8].endswith(" s")
        await page.screenshot(path=ARTIFACTS / "providers.png", full_page=True)
        await context.close()

        # JavaScript off: login and the gallery still work (only live updates need the script).
        quiet = await s.context(java_script_enabled=False)
        page = await quiet.new_page()
        await log_in(page)
        await page.wait_for_load_state("load")
        assert await page.locator("#gallery img").count() == len(PROMPTS) + 2
        await page.screenshot(path=ARTIFACTS / "gallery-nojs.png", full_page=True)
        await quiet.close()
        print("page loads (ms):", {k: round(v, 1) for k, v in s.loads.items()})

"""The UI's actions in a real browser (Debian's Chromium via Playwright, as tests/e2e/test_ui.py): cancel a
running job by clicking, through its confirmation, and the result shown on the page; the same form posted
without the CSRF token, or from another origin, is refused. Never skipped."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from submitter.simulator import Faults, Simulator
from submitter.status import Status
from tests.e2e.support import env_for, wait_for_status
from tests.e2e.test_ui import ARGS, ARTIFACTS, CHROMIUM, KEY, TIMEOUT_MS, log_in

pytestmark = pytest.mark.anyio

HELD = "a lighthouse, held at the provider"


@contextlib.asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[tuple[str, Runtime, Browser]]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (the UI tests need it)"
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=())
    sim.add_rule(HELD, Faults(drop=True, runtime=3600))  # running for an hour: a job to cancel
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings.from_env({**env_for(tmp_path, sim_url, public_url), "FLUXHOOK_API_KEYS": KEY})
        settings.results.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as exits:
            await exits.enter_async_context(serve_in_background(create_app(settings), sock, settings=settings))
            rt = await exits.enter_async_context(Runtime.open(settings))
            playwright = await exits.enter_async_context(async_playwright())
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            exits.push_async_callback(browser.close)
            yield public_url, rt, browser
        await sim.aclose()


async def test_cancel_a_job_by_clicking(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with stack(tmp_path) as (url, rt, browser):
        job = await submit(rt, "bfl", "flux-dev", {"prompt": HELD})
        await wait_for_status(rt.store, job.id, frozenset({Status.SUBMITTED, Status.RUNNING}))
        context = await browser.new_context(base_url=url, viewport={"width": 1100, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        await log_in(page)
        await page.goto(f"/ui/jobs/{job.id}")
        token = await page.locator('#actions input[name="csrf"]').first.input_value()

        # Without the token, or from another origin (the browser's cookie along), the form is refused.
        action = f"{url}/ui/jobs/{job.id}/cancel"
        answer = await context.request.post(action, form={"confirm": "yes"}, headers={"origin": url})
        assert answer.status == 403 and "CSRF token is missing" in await answer.text()
        answer = await context.request.post(action, form={"confirm": "yes", "csrf": token},
                                            headers={"origin": "http://evil.example"})
        assert answer.status == 403 and "another origin" in await answer.text()
        answer = await context.request.post(action, form={"confirm": "yes", "csrf": token}, headers={"origin": "null"})
        assert answer.status == 403
        still = await rt.store.get_job(job.id)
        assert still is not None and still.status in (Status.SUBMITTED, Status.RUNNING)

        # Clicking: the confirmation, then the job canceled and the page saying so.
        await page.get_by_role("button", name="Cancel the job…").click()
        await page.wait_for_url(f"**/ui/jobs/{job.id}/cancel")
        await page.screenshot(path=ARTIFACTS / "job-cancel-confirm.png", full_page=True)
        await page.get_by_role("button", name="Yes, cancel the job").click()
        await page.wait_for_url(re.compile(rf".*/ui/jobs/{job.id}\?done=canceled$"))
        assert await page.locator("#message").inner_text() == "The job is canceled."
        assert "canceled" in await page.locator(".facts").inner_text()
        assert await page.get_by_role("button", name="Cancel the job…").count() == 0
        await page.screenshot(path=ARTIFACTS / "job-canceled.png", full_page=True)
        found = await rt.store.get_job(job.id)
        assert found is not None and found.status == Status.CANCELED
        await context.close()

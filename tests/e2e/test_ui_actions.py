"""The UI's actions in a real browser (Debian's Chromium via Playwright, as tests/e2e/test_ui.py): each action of
the job page (receiver/web/ui/actions.py) clicked, with the result the page shows and its effect in the ledger:
cancel a running job (through its confirmation), retry a download that failed after the provider delivered,
redeliver an event to the sinks, enable a disabled sink again. Each form posted without the CSRF token, or from
another origin, is refused and changes nothing. Never skipped."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from receiver.web.ui.actions import DONE
from submitter.simulator import Faults, Simulator
from submitter.status import Status
from tests.e2e.integrations_support import FORWARD_SECRET, wait_until
from tests.e2e.support import WAIT, env_for, wait_for_status
from tests.e2e.test_ui import ARGS, ARTIFACTS, CHROMIUM, KEY, TIMEOUT_MS, log_in
from tests.sinks_support import Endpoint

pytestmark = pytest.mark.anyio

HELD = "a lighthouse, held at the provider"
Form = dict[str, str | float | bool]  # a form as Playwright posts it


class SpoilableCdn:
    """The simulator, whose result files (`/delivery/...`) are answered with an HTML page while `spoiled`: a
    download fluxhook refuses for good (the job ends `failed` after the provider delivered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.spoiled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.spoiled and scope["type"] == "http" and scope["path"].startswith("/delivery/"):
            await HTMLResponse("<html>sign in</html>")(scope, receive, send)
            return
        await self.app(scope, receive, send)


@dataclass
class Stack:
    url: str
    rt: Runtime
    browser: Browser
    cdn: SpoilableCdn
    hook: Endpoint


@contextlib.asynccontextmanager
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (the UI tests need it)"
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=())
    sim.add_rule(HELD, Faults(drop=True, runtime=3600))  # running for an hour: a job to cancel
    cdn = SpoilableCdn(sim.app)
    async with serve_in_background(cdn) as sim_url, Endpoint() as hook:
        sock = bind()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings.from_env({**env_for(tmp_path, sim_url, public_url), "FLUXHOOK_API_KEYS": KEY,
                                      "FLUXHOOK_FORWARD_URL": f"{hook.url}/hook",
                                      "FLUXHOOK_FORWARD_SECRET": FORWARD_SECRET})
        settings.results.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as exits:
            await exits.enter_async_context(serve_in_background(create_app(settings), sock, settings=settings))
            rt = await exits.enter_async_context(Runtime.open(settings))
            playwright = await exits.enter_async_context(async_playwright())
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            exits.push_async_callback(browser.close)
            yield Stack(public_url, rt, browser, cdn, hook)
        await sim.aclose()


async def signed_in(s: Stack, job_id: str) -> tuple[BrowserContext, Page, str]:
    """A browser signed in with the (admin) key, on the job's page; and the page's CSRF token."""
    context = await s.browser.new_context(base_url=s.url, viewport={"width": 1100, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await log_in(page)
    await page.goto(f"/ui/jobs/{job_id}")
    token = await page.locator('#actions input[name="csrf"], form.action input[name="csrf"]').first.input_value()
    return context, page, token


async def assert_refused(context: BrowserContext, url: str, path: str, form: Form, token: str) -> None:
    """The form without the token, or with it from another origin (the browser's cookie along): 403."""
    action = f"{url}{path}"
    answer = await context.request.post(action, form=form, headers={"origin": url})
    assert answer.status == 403 and "CSRF token is missing" in await answer.text(), path
    for origin in ("http://evil.example", "null"):
        answer = await context.request.post(action, form={**form, "csrf": token}, headers={"origin": origin})
        assert answer.status == 403 and "another origin" in await answer.text(), (path, origin)


async def message(page: Page) -> str:
    return await page.locator("#message").inner_text()


async def test_cancel_a_job_by_clicking(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with stack(tmp_path) as s:
        rt = s.rt
        job = await submit(rt, "bfl", "flux-dev", {"prompt": HELD})
        await wait_for_status(rt.store, job.id, frozenset({Status.SUBMITTED, Status.RUNNING}))
        context, page, token = await signed_in(s, job.id)

        await assert_refused(context, s.url, f"/ui/jobs/{job.id}/cancel", {"confirm": "yes"}, token)
        still = await rt.store.get_job(job.id)
        assert still is not None and still.status in (Status.SUBMITTED, Status.RUNNING)

        # Clicking: the confirmation, then the job canceled and the page saying so.
        await page.get_by_role("button", name="Cancel the job…").click()
        await page.wait_for_url(f"**/ui/jobs/{job.id}/cancel")
        await page.screenshot(path=ARTIFACTS / "job-cancel-confirm.png", full_page=True)
        await page.get_by_role("button", name="Yes, cancel the job").click()
        await page.wait_for_url(re.compile(rf".*/ui/jobs/{job.id}\?done=canceled$"))
        assert await message(page) == DONE["canceled"] == "The job is canceled."
        assert "canceled" in await page.locator(".facts").inner_text()
        assert await page.get_by_role("button", name="Cancel the job…").count() == 0
        await page.screenshot(path=ARTIFACTS / "job-canceled.png", full_page=True)
        found = await rt.store.get_job(job.id)
        assert found is not None and found.status == Status.CANCELED
        await context.close()


async def test_retry_a_failed_download_by_clicking(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        rt = s.rt
        s.cdn.spoiled = True  # the provider delivers; its file host answers a sign-in page
        job = await submit(rt, "bfl", "flux-dev", {"prompt": "a fox"})
        failed = await wait_for_status(rt.store, job.id)
        assert failed.status == Status.FAILED and failed.provider_job_id, failed
        assert [f.stored for f in await rt.store.files(job.id)] == [False]
        s.cdn.spoiled = False
        context, page, token = await signed_in(s, job.id)

        await assert_refused(context, s.url, f"/ui/jobs/{job.id}/retry", {}, token)
        still = await rt.store.get_job(job.id)
        assert still is not None and still.status == Status.FAILED

        await page.get_by_role("button", name="Retry the download").click()
        await page.wait_for_url(re.compile(rf".*/ui/jobs/{job.id}\?done=retried&n=1$"))
        assert await message(page) == DONE["retried"]
        stored = await wait_for_status(rt.store, job.id)
        assert stored.status == Status.STORED
        assert [f.stored for f in await rt.store.files(job.id)] == [True]
        await page.reload()
        assert "stored" in await page.locator(".facts").inner_text()
        assert await page.get_by_role("button", name="Retry the download").count() == 0
        await context.close()


async def test_redeliver_an_event_and_enable_a_sink_by_clicking(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        rt = s.rt
        job = await submit(rt, "bfl", "flux-dev", {"prompt": "a heron"})
        assert (await wait_for_status(rt.store, job.id)).status == Status.STORED
        (event,) = [e for e in await rt.store.events_after(0, job_id=job.id) if e.type == "job.stored"]

        def sent() -> int:
            return sum(r.headers.get("webhook-id") == event.id for r in s.hook.requests)

        async def attempts() -> int:
            (delivery,) = await rt.store.deliveries(event_id=event.id)
            return len(await rt.store.delivery_attempts(delivery.id))

        async def attempted(times: int) -> bool:
            return await attempts() == times

        await wait_until(lambda: sent() == 1, WAIT, "job.stored at the webhook")
        await wait_until(lambda: attempted(1), WAIT, "the delivery's attempt recorded")
        context, page, token = await signed_in(s, job.id)

        # Redeliver: refused without the token or from elsewhere; clicked, the event is sent again.
        await assert_refused(context, s.url, f"/ui/jobs/{job.id}/redeliver", {"event": event.id}, token)
        assert sent() == 1 and await attempts() == 1
        await page.get_by_role("button", name=f"Redeliver {event.id}").click()
        await page.wait_for_url(re.compile(rf".*/ui/jobs/{job.id}\?done=redelivered&n=1$"))
        assert await message(page) == DONE["redelivered"]
        await wait_until(lambda: sent() == 2, WAIT, "job.stored redelivered at the webhook")
        await wait_until(lambda: attempted(2), WAIT, "the redelivery's attempt recorded")
        (delivery,) = await rt.store.deliveries(event_id=event.id)
        assert delivery.state == "delivered"

        # Enable a sink disabled meanwhile: refused likewise; clicked, the sink is enabled again.
        (sink,) = await rt.store.sinks()
        assert await rt.store.disable_sink(sink.name, "410 Gone", now=rt.clock())
        await page.goto(f"/ui/jobs/{job.id}")
        form: Form = {"sink": sink.name, "job": job.id}
        await assert_refused(context, s.url, "/ui/sinks/enable", form, token)
        (still,) = await rt.store.sinks()
        assert still.disabled_at is not None and still.disabled_reason == "410 Gone"
        await page.get_by_role("button", name=re.compile(r"^Enable .+ again$")).click()
        await page.wait_for_url(re.compile(rf".*/ui/jobs/{job.id}\?done=enabled$"))
        assert await message(page) == DONE["enabled"]
        (enabled,) = await rt.store.sinks()
        assert enabled.disabled_at is None
        assert await page.get_by_role("button", name=re.compile(r"^Enable .+ again$")).count() == 0
        await context.close()


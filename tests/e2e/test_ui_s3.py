"""The web UI in a real browser with results in S3 (moto's server on loopback): every image on the gallery and
on a job page loads. The UI's file URLs answer 307 to a presigned URL at the bucket's origin, which the pages'
CSP must allow in `img-src` (a browser checks each redirect of an image against it). The same browser and
launch options as tests/e2e/test_ui.py, which covers local results.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Response, async_playwright

from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from submitter.simulator import Faults, Simulator
from submitter.status import Status
from tests.e2e.support import env_for, wait_for_status
from tests.e2e.test_ui import ARGS, ARTIFACTS, CHROMIUM, KEY, TIMEOUT_MS, images_loaded, log_in
from tests.receiver.results.test_results import BUCKET, aws_env, s3_endpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio

PROMPTS = [("bfl", "flux-dev", "a lighthouse at dusk"), ("replicate", "black-forest-labs/flux-schnell", "two outputs, a harbour"),
           ("cometapi", "flux-pro-1.1-ultra", "a lemon on a blue plate")]


@contextlib.asynccontextmanager
async def s3_stack(tmp_path: Path, endpoint: str) -> AsyncIterator[tuple[str, Runtime, Browser]]:
    """A receiver with FLUXHOOK_RESULTS=s3://... at `endpoint`, the simulator, and Chromium."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install -y chromium (the UI tests need it)"
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=(0.05, 0.1))
    sim.add_rule("two outputs", Faults(outputs=2, runtime=0.05))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings.from_env({
            **env_for(tmp_path, sim_url, public_url), "FLUXHOOK_API_KEYS": KEY,
            "FLUXHOOK_RESULTS": f"s3://{BUCKET}/ui-{os.urandom(4).hex()}", "FLUXHOOK_S3_ENDPOINT": endpoint,
        })
        app = create_app(settings)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(serve_in_background(app, sock, settings=settings))
            rt = await stack.enter_async_context(Runtime.open(settings))
            playwright = await stack.enter_async_context(async_playwright())
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
            stack.push_async_callback(browser.close)
            yield public_url, rt, browser
        await sim.aclose()


def from_bucket(responses: list[Response], endpoint: str) -> dict[str, int]:
    """The objects fetched from the bucket (presigned URLs, without their query) and their statuses."""
    return {r.url.split("?")[0]: r.status for r in responses if r.url.startswith(f"{endpoint}/{BUCKET}/")}


async def test_images_load_from_s3_in_a_browser(tmp_path: Path, s3_endpoint: str, aws_env: None) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    async with s3_stack(tmp_path, s3_endpoint) as (url, rt, browser):
        jobs = []
        for seed, (provider, model, prompt) in enumerate(PROMPTS):
            job = await submit(rt, provider, model, {"prompt": prompt, "seed": seed})
            done = await wait_for_status(rt.store, job.id)
            assert done.status == Status.STORED, (done.status, done.error)
            jobs.append(job.id)
        assert not (tmp_path / "results").exists()  # the files are in the bucket, not in a folder

        context = await browser.new_context(base_url=url, viewport={"width": 1100, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        refused: list[str] = []  # Chromium reports a CSP refusal on the console
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        responses: list[Response] = []
        page.on("response", lambda r: responses.append(r))
        await log_in(page)

        # The gallery: every image loaded, each through a 307 to the bucket.
        responses.clear()
        await page.goto("/ui", wait_until="load")
        widths = await images_loaded(page)
        assert len(widths) == len(PROMPTS) + 1 and all(w > 0 for w in widths), widths  # one job has two outputs
        fetched = from_bucket(responses, s3_endpoint)
        assert len(fetched) == len(widths) and set(fetched.values()) == {200}, fetched
        assert refused == []
        await page.screenshot(path=ARTIFACTS / "gallery-s3.png", full_page=True)

        # A job page with two images.
        responses.clear()
        await page.goto(f"/ui/jobs/{jobs[1]}", wait_until="load")
        widths = await images_loaded(page, "main img")
        assert len(widths) == 2 and all(w > 0 for w in widths), widths
        fetched = from_bucket(responses, s3_endpoint)
        prefix = (rt.settings.results_url or "").removeprefix(f"s3://{BUCKET}/")
        assert sorted(fetched) == [f"{s3_endpoint}/{BUCKET}/{prefix}/{jobs[1]}/{n}.png" for n in (0, 1)], fetched
        assert refused == []
        await page.screenshot(path=ARTIFACTS / "job-s3.png", full_page=True)
        await context.close()

"""Every job ends, by the bound README "Security" states: a succeeded job whose files never download ends
`expired` by `store_by` (its deadline plus FLUXHOOK_DOWNLOAD_WINDOW), never scheduled past it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from receiver.engine.downloading import store_by
from receiver.engine.sweep import sweep_once
from submitter.status import TERMINAL, Status
from tests.harness import harness, provider_id
from tests.receiver.web.test_app import a_job, post, ready_body

pytestmark = pytest.mark.anyio


async def test_a_result_that_never_downloads_ends_expired_by_the_stated_bound(tmp_path: Path) -> None:
    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with harness(tmp_path, cdn_transport=httpx.MockTransport(flaky)) as h:
        job_id = await a_job(h)
        far = "http://sim.test/delivery/x/sample.png?se=2099-01-01T00%3A00%3A00Z"  # claims to live for decades
        assert (await post(h, "bfl", job_id, ready_body(await provider_id(h, job_id), far))).status_code == 200
        job = await h.rt.store.get_job(job_id)
        assert job is not None
        bound = store_by(job, h.settings.download_window)
        assert bound == job.deadline_at + h.settings.download_window
        for _ in range(10_000):
            await sweep_once(h.rt)
            job = await h.rt.store.get_job(job_id)
            assert job is not None
            if job.status in TERMINAL:
                break
            assert job.status == Status.SUCCEEDED and job.next_check_at is not None
            assert job.next_check_at <= bound  # never scheduled past the bound
            h.clock.now = max(h.clock.now, job.next_check_at)
        assert job.status == Status.EXPIRED and "not stored within" in (job.error or "")
        assert h.clock.now <= bound

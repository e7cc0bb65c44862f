"""A download keeps its job's lease while bytes flow (a slow result server outlives several leases and no
other process takes the job), and stops once another process took the job over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.engine.sweep import sweep_once
from submitter.simulator import png_image
from submitter.status import Status
from tests import ledger
from tests.harness import Harness, files_in, harness, provider_id
from tests.receiver.web.test_app import a_job, post, ready_body

pytestmark = pytest.mark.anyio


async def test_a_trickling_download_keeps_its_lease_and_nobody_else_takes_the_job(tmp_path: Path) -> None:
    taken: list[object] = []
    harness_box: dict[str, Harness] = {}

    async def trickle() -> AsyncIterator[bytes]:
        h = harness_box["h"]
        image = png_image("slow")
        step = 16
        for start in range(0, len(image), step):
            h.clock.advance(7.0)  # ~9 bytes/s: the whole file takes far longer than a lease
            taken.append(await ledger.claim(h.rt.store, job_id, "another-replica", now=h.clock.now, lease=60))
            yield image[start:start + step]

    def cdn(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=trickle())

    async with harness(tmp_path, cdn_transport=httpx.MockTransport(cdn), lease_seconds=30) as h:
        harness_box["h"] = h
        job_id = await a_job(h)
        ready = ready_body(await provider_id(h, job_id), "http://sim.test/delivery/x/sample.png")
        assert (await post(h, "bfl", job_id, ready)).status_code == 200
        started = h.clock.now
        await sweep_once(h.rt)
        assert h.clock.now - started > 4 * h.settings.lease_seconds  # the download outlived several leases
        assert len(taken) > 10 and taken == [None] * len(taken)  # ...and no one else could claim the job
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.STORED


async def test_a_download_whose_lease_was_taken_stops(tmp_path: Path) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        h = harness_box["h"]
        image = png_image("taken")
        yield image[:64]
        # Another process took the job over (our lease lapsed, say, during a long stall).
        await ledger.write(h.rt.store, "UPDATE jobs SET lease_owner = 'other', lease_until = ?",
                                (h.clock.now + 1e6,))
        h.clock.advance(h.settings.lease_seconds)
        yield image[64:]

    harness_box: dict[str, Harness] = {}

    def cdn(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=trickle())

    async with harness(tmp_path, cdn_transport=httpx.MockTransport(cdn)) as h:
        harness_box["h"] = h
        job_id = await a_job(h)
        ready = ready_body(await provider_id(h, job_id), "http://sim.test/delivery/x/sample.png")
        assert (await post(h, "bfl", job_id, ready)).status_code == 200
        report = await sweep_once(h.rt)
        assert report.actions["download-retry"] == 1
        assert files_in(h.settings.results) == []  # no temp file left, nothing stored twice
        (record,) = await h.rt.store.files(job_id)
        assert not record.stored

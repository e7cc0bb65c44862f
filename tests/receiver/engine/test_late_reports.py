"""Once the provider reported a result, nothing it says later abandons the paid files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.engine.sweep import sweep_once
from submitter.simulator import png_image
from submitter.status import TERMINAL, Status, can_follow, can_observe, observed_predecessors
from tests.harness import harness
from tests.receiver.engine.test_replicate import (
    SECRET,
    FakeReplicate,
    deliver,
    fake_harness,
    new_prediction,
    snapshot,
    with_key,
)
from tests.receiver.web.test_app import a_job, post, ready_body

pytestmark = pytest.mark.anyio


def test_no_observation_moves_a_succeeded_job() -> None:
    for new in Status:
        assert not can_observe(Status.SUCCEEDED, new)
        assert Status.SUCCEEDED not in observed_predecessors(new)
    # ...while the download path still may end it.
    assert can_follow(Status.SUCCEEDED, Status.STORED)
    assert can_follow(Status.SUCCEEDED, Status.FAILED) and can_follow(Status.SUCCEEDED, Status.EXPIRED)
    assert not can_observe(Status.SUCCEEDED, Status.STORED) and observed_predecessors(Status.STORED) == frozenset()
    for current in (Status.QUEUED, Status.SUBMITTED, Status.RUNNING):
        for end in TERMINAL - {Status.STORED}:
            assert can_observe(current, end)


BFL_LATE = {
    "error": {"status": "Error", "details": {"error": "internal"}},
    "ready-without-result": {"status": "Ready", "result": None},
    "failed": {"status": "Failed"},
    "moderated": {"status": "Content Moderated"},
}


@pytest.mark.parametrize("late", list(BFL_LATE), ids=str)
async def test_a_late_bfl_failure_does_not_end_a_succeeded_job(tmp_path: Path, late: str) -> None:
    fetched: list[str] = []

    def cdn(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200, content=png_image("late"), headers={"content-type": "image/png"})

    async with harness(tmp_path, cdn_transport=httpx.MockTransport(cdn)) as h:
        job_id = await a_job(h)
        pid = (await h.rt.store.get_job(job_id)).provider_job_id  # type: ignore[union-attr]
        ready = ready_body(pid or "", "http://sim.test/delivery/x/sample.png")
        assert (await post(h, "bfl", job_id, ready)).json()["status"] == "succeeded"
        response = await post(h, "bfl", job_id, json.dumps({"id": pid, **BFL_LATE[late]}).encode())
        assert response.status_code == 200 and response.json()["status"] == "succeeded"
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUCCEEDED and job.error is None
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.STORED
        assert [f.stored for f in await h.rt.store.files(job_id)] == [True] and len(fetched) == 1


REPLICATE_LATE: dict[str, dict[str, Any]] = {
    "failed": {"status": "failed", "error": "worker lost"},
    "data-removed": {"status": "succeeded", "output": None, "data_removed": True},
    "canceled": {"status": "canceled"},
}


@pytest.mark.parametrize("late", list(REPLICATE_LATE), ids=str)
async def test_a_late_replicate_report_does_not_end_a_succeeded_job(tmp_path: Path, late: str) -> None:
    fake = FakeReplicate()
    async with fake_harness(tmp_path, fake) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        done = fake.finish(pid)
        assert (await deliver(h, "replicate", job_id, done, msg_id="m1", secret=SECRET)).json()["status"] == "succeeded"
        body = {**snapshot(REPLICATE_LATE[late]["status"]), **REPLICATE_LATE[late], "id": pid}
        response = await deliver(h, "replicate", job_id, body, msg_id="m2", secret=SECRET)
        assert response.status_code == 200 and response.json()["status"] == "succeeded"
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.STORED
        assert sum(fake.downloads.values()) == 1


@pytest.mark.parametrize("answer", ["task-not-found", "too-many-results"])
async def test_a_poll_in_flight_when_the_result_lands_does_not_end_the_job(tmp_path: Path, answer: str) -> None:
    """The sweep polls a running job; its Ready callback lands before the poll's answer, which then says
    `Task not found` (a lagging replica) or lists too many files: the job stays succeeded."""
    from receiver.engine.sweep import handle
    from submitter.bodies import Observation

    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        pid = (await h.rt.store.get_job(job_id)).provider_job_id or ""  # type: ignore[union-attr]
        h.clock.advance(700)  # past the grace within which `Task not found` is not believed
        (claimed,) = await h.rt.store.claim_due(h.rt.owner, now=h.clock(), lease=60, limit=10, downloads=False)

        class RacingProvider:
            async def poll(self, provider_job_id: str, polling_url: str | None) -> Observation:
                landed = await post(h, "bfl", job_id, ready_body(pid, "http://sim.test/delivery/x/sample.png"))
                assert landed.json()["status"] == "succeeded"
                if answer == "task-not-found":
                    return Observation(pid, None, "Task not found", not_found=True, reason="task not found")
                urls = tuple(f"http://sim.test/{n}.png" for n in range(999))
                return Observation(pid, Status.SUCCEEDED, "Ready", urls=urls)

        h.rt.client = lambda provider: RacingProvider()  # type: ignore[method-assign,assignment,return-value]
        await handle(h.rt, claimed)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUCCEEDED and job.error is None
        assert len(await h.rt.store.files(job_id)) == 1

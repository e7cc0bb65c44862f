"""Replicate end to end: real uvicorn receiver and simulator on loopback, Standard Webhooks signatures."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.engine.jobs import submit
from submitter.simulator import Faults
from submitter.status import Status
from tests import ledger
from tests.e2e.test_loopback import files_of, stack

pytestmark = pytest.mark.anyio
MODEL = "black-forest-labs/flux-schnell"


async def test_all_events_then_four_outputs_stored_once(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("four", Faults(outputs=4, runtime=0.3))
        job = await submit(s.rt, "replicate", MODEL, {"prompt": "four", "num_outputs": 4},
                           events=["start", "output", "logs", "completed"])
        done = await s.wait(job.id)
        assert done.status == Status.STORED and done.polls == 0, done.error
        assert [p.name for p in await files_of(s, job.id)] == ["0.png", "1.png", "2.png", "3.png"]
        task = s.sim.stats()["tasks"][done.provider_job_id]
        assert task["polls"] == 0 and task["deliveries"] == 4
        assert task["events_sent"]["start"] == 1 and task["events_sent"]["completed"] == 1
        # The signing secret was fetched from the API once, and every event verified.
        verdicts = [r["verdict"] for r in await ledger.rows(s.rt.store,
            "SELECT verdict FROM events WHERE job_id = ?", (job.id,))]
        assert verdicts and set(verdicts) == {"accepted:standard-webhooks"}


async def test_completed_webhook_dropped_is_rescued_by_one_poll(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("lost", Faults(drop_completed=True, runtime=0.05))
        job = await submit(s.rt, "replicate", MODEL, {"prompt": "lost"}, events=["start", "completed"])
        done = await s.wait(job.id)
        assert done.status == Status.STORED and done.callback_at is not None  # the start event came
        assert s.sim.stats()["tasks"][done.provider_job_id]["polls"] == 1


async def test_forged_replicate_webhooks_are_refused_and_the_poll_still_saves_the_job(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("forged", Faults(bad_signature=True, runtime=0.05))
        job = await submit(s.rt, "replicate", MODEL, {"prompt": "forged"})
        done = await s.wait(job.id)
        assert done.status == Status.STORED and done.callback_at is None and done.polls >= 1
        assert (await s.health()).get("rejected", 0) >= 1
        assert await ledger.count_events(s.rt.store, job.id) == 0


@pytest.mark.parametrize("provider", ["deerapi-replicate", "cometapi-replicate"])
async def test_proxy_webhooks_signed_with_the_proxys_secret_are_accepted_by_token(tmp_path: Path, provider: str) -> None:
    async with stack(tmp_path) as s:
        job = await submit(s.rt, provider, "black-forest-labs/flux-1.1-pro", {"prompt": "proxied"})
        done = await s.wait(job.id)
        assert done.status == Status.STORED and done.polls == 0
        verdicts = {r["verdict"] for r in await ledger.rows(s.rt.store,
            "SELECT verdict FROM events WHERE job_id = ?", (job.id,))}
        assert verdicts == {"accepted:token (signature not verifiable)"}


async def test_aborted_prediction_ends_canceled_with_the_reason(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        s.sim.add_rule("abort", Faults(outcome="aborted", runtime=0.05))
        job = await submit(s.rt, "replicate", MODEL, {"prompt": "abort"})
        done = await s.wait(job.id)
        assert done.status == Status.CANCELED and "aborted" in (done.error or "")

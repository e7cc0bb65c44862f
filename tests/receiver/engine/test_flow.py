"""The whole loop in-process: submit, callback or poll, download, stored. A manual clock, no sleeps."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.engine.schedule import RETRY_LATER
from receiver.engine.sweep import sweep_once
from submitter.simulator import Faults
from submitter.status import Status
from tests import ledger
from tests.harness import Harness, files_in, harness

pytestmark = pytest.mark.anyio


async def finish(h: Harness) -> None:
    """Deliver pending callbacks, then run the sweep (downloads are due at once)."""
    await h.settle()
    await sweep_once(h.rt)


async def stored_files(h: Harness, job_id: str) -> list[Path]:
    files = await h.rt.store.files(job_id)
    paths = [h.settings.results / f.path for f in files if f.path]
    for f, path in zip(files, paths, strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256
        assert path.stat().st_size == f.size
    return paths


def provider_calls(h: Harness, task: str) -> tuple[int, int]:
    stats = h.sim.stats()["tasks"][task]
    return stats["submits"], stats["polls"]


@pytest.mark.parametrize("provider", ["bfl", "deerapi", "cometapi"])
@pytest.mark.parametrize("signature", ["hmac", "echo", "none"])
async def test_callback_to_stored_file_with_one_api_call(tmp_path: Path, provider: str, signature: str) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, signature=signature)) as h:
        job = await submit(h.rt, provider, "flux-dev", {"prompt": "a fox"})
        # With no runtime the callback may beat the submit answer: both orders end the same.
        assert job.status in (Status.SUBMITTED, Status.SUCCEEDED) and job.provider_job_id
        await finish(h)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED and done.callback_at is not None
        (path,) = await stored_files(h, job.id)
        assert path == h.settings.results / job.id / "0.png"
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert provider_calls(h, job.provider_job_id) == (1, 0)  # the submit, and no poll


async def test_dropped_callback_is_rescued_by_polling(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, drop=True)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await finish(h)
        assert (await h.rt.store.get_job(job.id)).status == Status.SUBMITTED  # type: ignore[union-attr]
        h.clock.advance(h.settings.poll_after)
        report = await sweep_once(h.rt)
        assert report.actions["polled"] == 1 and report.actions["stored"] == 1
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED and done.callback_at is None
        assert len(await stored_files(h, job.id)) == 1
        assert provider_calls(h, job.provider_job_id or "") == (1, 1)


async def test_polling_backs_off_until_done(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=100.0, drop=True)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "slow"})
        h.clock.advance(60)
        checks = []
        for _ in range(8):
            await sweep_once(h.rt)
            current = await h.rt.store.get_job(job.id)
            assert current is not None
            if current.status == Status.STORED:
                break
            checks.append(current.next_check_at - h.clock.now)  # type: ignore[operator]
            h.clock.advance(current.next_check_at - h.clock.now)  # type: ignore[operator]
        assert checks[:3] == [10.0, 20.0, 40.0]
        assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]


async def test_five_duplicate_callbacks_make_one_file_and_one_transition(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, duplicate=5, reorder=True)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "dupes"})
        await finish(h)
        assert h.rt.metrics["accepted"] == 2  # the terminal callback once, the stale Pending once
        assert h.rt.metrics["duplicate"] == 4
        assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]
        assert len(await stored_files(h, job.id)) == 1
        assert len(list((h.settings.results / job.id).iterdir())) == 1


async def test_429_and_503_on_submit_are_retried(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.sim.add_rule("busy", Faults(runtime=0.0, submit_errors=(429, 503)))
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "busy"})
        assert job.status in (Status.SUBMITTED, Status.SUCCEEDED)
        assert h.sleeps[0] == 0.0  # the simulator's Retry-After: 0
        assert h.sim.stats()["totals"]["submit_requests"] == 3
        await finish(h)
        assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]


async def test_provider_down_longer_than_the_retries_defers_to_the_sweep(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.sim.add_rule("down", Faults(runtime=0.0, submit_errors=(503,) * 5))
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "down"})
        assert job.status == Status.QUEUED and "503" in (job.note or "")
        h.clock.advance(120)
        await sweep_once(h.rt)
        await finish(h)
        assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]


async def test_rejected_submit_fails_with_the_providers_message(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": 12})
        assert job.status == Status.FAILED and "422" in (job.error or "")
        assert job.next_check_at is None


async def test_expired_url_is_re_polled_for_a_fresh_one(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, expired_url=True)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "late"})
        await finish(h)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED and done.repolls == 1
        assert len(await stored_files(h, job.id)) == 1
        assert h.sim.stats()["totals"]["deliveries_refused"] == 1


async def test_expired_url_with_no_fresh_one_ends_expired(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, expired_url=True)) as h:
        h.sim.url_lifetime = -120  # every URL the provider hands out is already stale
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "late"})
        await finish(h)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.EXPIRED and "expired" in (done.error or "")
        assert files_in(h.settings.results / job.id) == []


async def test_webhook_mode_answer_without_polling_url(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, webhook_shape=True, drop=True)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "x"})
        assert job.status == Status.SUBMITTED and job.polling_url is None
        h.clock.advance(60)
        await sweep_once(h.rt)
        assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]


@pytest.mark.parametrize(("outcome", "status", "reason"), [
    ("error", Status.FAILED, "simulated failure"),
    ("content_moderated", Status.MODERATED, "Simulated"),
    ("request_moderated", Status.MODERATED, "Simulated"),
])
async def test_provider_verdicts(tmp_path: Path, outcome: str, status: Status, reason: str) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, outcome=outcome)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "x"})
        await finish(h)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == status and reason in (done.error or "")


async def test_concurrency_cap_queues_instead_of_hitting_429(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=1e6, drop=True), max_active={"bfl": 2}) as h:
        jobs = [await submit(h.rt, "bfl", "flux-dev", {"prompt": f"p{i}"}) for i in range(3)]
        assert [j.status for j in jobs] == [Status.SUBMITTED, Status.SUBMITTED, Status.QUEUED]
        assert "slot" in (jobs[2].note or "")
        assert h.sim.stats()["totals"]["submit_requests"] == 2
        await h.rt.store.finish(jobs[0].id, Status.CANCELED, now=h.clock.now)
        h.clock.advance(10)
        await sweep_once(h.rt)
        assert (await h.rt.store.get_job(jobs[2].id)).status == Status.SUBMITTED  # type: ignore[union-attr]


async def test_ambiguous_submit_is_never_resubmitted_and_its_callback_still_lands(tmp_path: Path) -> None:
    class LoseFirstAnswer(httpx.AsyncBaseTransport):
        """Forward to the simulator, but drop the answer to the first submit."""

        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner, self.lost = inner, False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if request.method == "POST" and not self.lost:
                self.lost = True
                raise httpx.ReadTimeout("no answer", request=request)
            return response

    box: dict[str, Harness] = {}

    class Late(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await LoseFirstAnswer.handle_async_request(transport, request)

    transport = LoseFirstAnswer(httpx.MockTransport(lambda r: httpx.Response(500)))
    async with harness(tmp_path, api_transport=Late()) as h:
        box["h"] = h
        transport.inner = httpx.ASGITransport(h.sim.app)
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "lost answer"})
        assert "outcome unknown" in (job.note or "")
        assert job.status == Status.SUCCEEDED or (job.status == Status.SUBMITTED and job.provider_job_id is None)
        await finish(h)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED and done.provider_job_id
        assert h.sim.stats()["totals"]["submit_requests"] == 1


async def test_deadline_expires_jobs_that_never_finish(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=1e6, drop=True)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "forever"})
        for _ in range(100):
            current = await h.rt.store.get_job(job.id)
            if current is None or current.status == Status.EXPIRED:
                break
            h.clock.advance(max(current.next_check_at - h.clock.now, 0))  # type: ignore[operator]
            await sweep_once(h.rt)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.EXPIRED and "deadline" in (done.error or "")
        assert h.clock.now - done.created_at == pytest.approx(h.settings.job_deadline)
        assert done.polls < 40  # backed off, not hammering


async def test_two_sweepers_never_poll_or_download_the_same_job_twice(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, drop=True)) as h:
        jobs = [await submit(h.rt, "bfl", "flux-dev", {"prompt": f"p{i}"}) for i in range(12)]
        h.clock.advance(60)
        from receiver.store.sqlite import SQLiteStore

        other_store = SQLiteStore(h.settings.db)
        await other_store.open()
        other = Runtime(settings=h.settings, store=other_store, api=h.rt.api, cdn=h.rt.cdn, clock=h.clock,
                        resolver=h.rt.resolver)
        try:
            a, b = await asyncio.gather(sweep_once(h.rt), sweep_once(other))
        finally:
            await other_store.close()
        assert a.actions["polled"] + b.actions["polled"] == 12
        assert a.actions["stored"] + b.actions["stored"] == 12
        totals = h.sim.stats()["totals"]
        assert totals["polls"] == 12 and totals["deliveries"] == 12
        for job in jobs:
            assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]


async def test_a_trickling_download_is_cut_off_and_retried_later(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, slow_download=50.0), download_timeout=0.05) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "slow cdn"})
        await h.settle()
        report = await sweep_once(h.rt)
        assert report.actions["download-retry"] == 1
        current = await h.rt.store.get_job(job.id)
        assert current is not None and current.status == Status.SUCCEEDED
        assert current.next_check_at is not None and current.next_check_at > h.clock.now
        assert files_in(h.settings.results / job.id) == []  # no partial file left behind


async def test_sweeps_racing_new_submits_never_submit_twice(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=1e6, drop=True)) as h:
        results = await asyncio.gather(
            *(submit(h.rt, "bfl", "flux-dev", {"prompt": f"p{i}"}) for i in range(8)),
            *(sweep_once(h.rt) for _ in range(4)),
        )
        h.clock.advance(10)  # past any slot wait: a second submit would happen now
        await sweep_once(h.rt)
        for job in results[:8]:
            current = await h.rt.store.get_job(job.id)  # type: ignore[union-attr]
            assert current is not None and current.status == Status.SUBMITTED and current.note is None
        assert h.sim.stats()["totals"]["submit_requests"] == 8


async def test_a_huge_retry_after_is_capped_when_deferring(tmp_path: Path) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(429, headers={"retry-after": "86400"}))
    async with harness(tmp_path, api_transport=transport) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})
        assert job.status == Status.QUEUED and job.next_check_at is not None
        assert job.next_check_at - h.clock.now == RETRY_LATER.max_retry_after == 60.0  # the cap, not a day


async def test_download_lease_is_renewed_while_bytes_arrive(tmp_path: Path) -> None:
    from receiver.engine.leases import Lease

    async with harness(tmp_path, faults=Faults(drop=True, runtime=1e6), lease_seconds=30.0) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})
        claimed = await ledger.claim(h.rt.store, job.id, h.rt.owner, now=h.clock.now, lease=30.0)
        assert claimed is not None
        lease = Lease(h.rt.store, claimed, h.rt.owner, seconds=30.0, clock=h.clock)
        await lease.renew_when_due()  # too soon to bother the store
        assert (await h.rt.store.get_job(job.id)).lease_until == h.clock.now + 30.0  # type: ignore[union-attr]
        h.clock.advance(25)
        await lease.renew_when_due()
        assert (await h.rt.store.get_job(job.id)).lease_until == h.clock.now + 30.0  # type: ignore[union-attr]


async def test_a_slow_submit_keeps_its_lease_so_no_sweeper_calls_it_interrupted(tmp_path: Path) -> None:
    arrived, answer = asyncio.Event(), asyncio.Event()

    class SlowProvider(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            arrived.set()
            await answer.wait()
            return httpx.Response(200, json={"id": "task-1", "polling_url": None})

    async with harness(tmp_path, api_transport=SlowProvider(), lease_seconds=0.3) as h:
        submitting = asyncio.create_task(submit(h.rt, "bfl", "flux-dev", {"prompt": "slow"}))
        await arrived.wait()
        (job,) = await h.rt.store.list_jobs()
        first_lease = job.lease_until
        h.clock.advance(0.2)
        async with asyncio.timeout(10):  # the renewal runs every lease/3 of real time
            while (await h.rt.store.get_job(job.id)).lease_until == first_lease:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        h.clock.advance(0.15)  # past the first lease, inside the renewed one
        assert (await sweep_once(h.rt)).claimed == 0
        answer.set()
        done = await submitting
        assert done.status == Status.SUBMITTED and done.provider_job_id == "task-1" and done.note is None


async def test_a_submitter_that_died_between_refused_attempts_is_resubmitted(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "p"})  # (the simulator accepts it)
        other = await h.rt.store.get_job(job.id)
        assert other is not None
        # Another job whose submitter held its slot, was refused (nothing on the wire), then died.
        from receiver.engine.jobs import new_job

        dead = await new_job(h.rt, "bfl", "flux-dev", {"prompt": "orphan"})
        assert await h.rt.store.reserve_slot(dead.id, cap=24, model_cap=24, now=h.clock.now)
        await h.rt.store.mark_sending(dead.id, True)
        await h.rt.store.mark_sending(dead.id, False)
        h.clock.advance(h.settings.lease_seconds + 1)
        await sweep_once(h.rt)
        current = await h.rt.store.get_job(dead.id)
        assert current is not None and current.status in (Status.SUBMITTED, Status.SUCCEEDED, Status.STORED)
        assert current.provider_job_id is not None and "outcome unknown" not in (current.note or "")


async def test_a_submitter_that_died_with_its_request_on_the_wire_is_never_resent(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0)) as h:
        from receiver.engine.jobs import new_job

        dead = await new_job(h.rt, "bfl", "flux-dev", {"prompt": "orphan"})
        assert await h.rt.store.reserve_slot(dead.id, cap=24, model_cap=24, now=h.clock.now)
        await h.rt.store.mark_sending(dead.id, True)
        h.clock.advance(h.settings.lease_seconds + 1)
        await sweep_once(h.rt)
        current = await h.rt.store.get_job(dead.id)
        assert current is not None and current.status == Status.SUBMITTED and "outcome unknown" in (current.note or "")
        assert h.sim.stats()["totals"]["submit_requests"] == 0


async def test_a_re_poll_cut_short_by_a_crash_is_tried_again(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, expired_url=True)) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "late"})
        await h.settle()
        await h.rt.store.note_repoll(job.id)  # a previous process asked, then died before saving the answer
        await sweep_once(h.rt)
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED and done.repolls == 2

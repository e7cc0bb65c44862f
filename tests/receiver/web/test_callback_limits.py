"""What a callback may be and make us keep: UTF-8 JSON only, headers and audit events capped per event and
per job, result files capped per job (a callback listing more is refused, a poll listing more fails the job),
and a callback must name its provider task (README "Security": caps, input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from receiver.engine.sweep import sweep_once
from submitter.bodies import BodyError, loads_object
from submitter.status import Status
from tests import ledger
from tests.harness import harness, provider_id
from tests.receiver.engine.test_replicate import FakeReplicate, fake_harness, new_prediction, with_key
from tests.receiver.web.test_app import a_job, post

pytestmark = pytest.mark.anyio


# -- UTF-8 only -----------------------------------------------------------------------------------

def _encodings(pid: str) -> dict[str, bytes]:
    escaped = '{"id": "PID", "status": "Pending", "x": "\\ud800"}'.replace("PID", pid)
    raw = '{"id": "PID", "status": "Pending", "x": "\ud800"}'.replace("PID", pid)
    clean = '{"id": "PID", "status": "Pending"}'.replace("PID", pid)
    return {
        "utf-16-escaped": escaped.encode("utf-16"),
        "utf-16le-escaped": escaped.encode("utf-16-le"),
        "utf-32-escaped": escaped.encode("utf-32"),
        "utf-16-raw-surrogate": raw.encode("utf-16-le", "surrogatepass"),
        "utf-32-raw-surrogate": raw.encode("utf-32-le", "surrogatepass"),
        "utf-8-encoded-surrogate": raw.encode("utf-8", "surrogatepass"),
        "utf-16-clean": clean.encode("utf-16"),
        "latin-1": clean.replace("Pending", "Pending\xe9").encode("latin-1"),
        "utf-8-bom": b"\xef\xbb\xbf" + clean.encode(),
    }


@pytest.mark.parametrize("name", list(_encodings("p")), ids=str)
async def test_a_callback_that_is_not_utf8_is_400_and_stores_nothing(tmp_path: Path, name: str) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = _encodings(await provider_id(h, job_id))[name]
        response = await post(h, "bfl", job_id, body)
        assert response.status_code == 400, response.text
        assert "error" in response.json()
        assert await ledger.count_events(h.rt.store, job_id) == 0
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUBMITTED


def test_loads_object_accepts_utf8_only() -> None:
    assert loads_object('{"x": "é ✓ 🦊"}'.encode()) == {"x": "é ✓ 🦊"}
    with pytest.raises(BodyError, match="UTF-8"):
        loads_object('{"x": 1}'.encode("utf-16"))
    with pytest.raises(BodyError):
        loads_object(b'{"x": "\\udc00"}')
    assert json.loads(b'{"x": "\\ud83e\\udd8a"}') == loads_object(b'{"x": "\\ud83e\\udd8a"}')  # a valid pair


# -- what a callback may store is capped, per event and per job ------------------------------------

async def test_huge_headers_are_not_stored_whole(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = json.dumps({"id": await provider_id(h, job_id), "status": "Pending"}).encode()
        many = {f"x-pad-{n}": "v" * 900 for n in range(40)}
        response = await post(h, "bfl", job_id, body, **{"x-huge": "h" * 200_000}, **many)
        assert response.status_code == 200, response.text
        (row,) = await ledger.rows(h.rt.store, "SELECT headers FROM events")
        assert len(row["headers"]) < 10_000
        kept = json.loads(row["headers"])
        assert kept["x-huge"].startswith("h" * 1024) and "not kept" in kept["x-huge"]
        assert "more headers not kept" in kept["[truncated]"]


async def test_events_per_job_are_capped_and_finished_jobs_record_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path, max_events_per_job=3) as h:
        job_id = await a_job(h)
        pid = await provider_id(h, job_id)
        for n in range(6):
            body = json.dumps({"id": pid, "status": "Pending", "progress": n}).encode()
            response = await post(h, "bfl", job_id, body)
            assert response.status_code == 200
            assert response.json().get("recorded", True) == (n < 3)
        assert await ledger.count_events(h.rt.store, job_id) == 3
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.progress == 5  # still applied beyond the cap
        await h.rt.store.finish(job_id, Status.FAILED, now=h.clock.now, reason="test")
        late = await post(h, "bfl", job_id, json.dumps({"id": pid, "status": "Pending", "x": 1}).encode())
        assert late.status_code == 200 and late.json() == {"ok": True, "status": "failed", "recorded": False}
        assert await ledger.count_events(h.rt.store, job_id) == 3


# -- result files per job are capped -----------------------------------------------------------------

async def test_a_callback_listing_more_results_than_the_cap_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path, max_outputs=4) as h:
        job_id = await a_job(h)
        pid = await provider_id(h, job_id)
        urls = [f"http://sim.test/d/{n}.png" for n in range(7000)]  # 182 KB: under the body cap
        body = json.dumps({"id": pid, "status": "Ready", "result": {"sample": urls}}).encode()
        response = await post(h, "bfl", job_id, body)
        assert response.status_code == 422
        assert "7000 result files" in response.json()["error"] and "FLUXHOOK_MAX_OUTPUTS" in response.json()["error"]
        assert await h.rt.store.files(job_id) == [] and await ledger.count_events(h.rt.store, job_id) == 0
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUBMITTED
        within = json.dumps({"id": pid, "status": "Ready", "result": {"sample": urls[:4]}}).encode()
        assert (await post(h, "bfl", job_id, within)).status_code == 200
        assert len(await h.rt.store.files(job_id)) == 4


async def test_a_poll_listing_more_results_than_the_cap_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    fake = FakeReplicate(outputs=20)
    async with fake_harness(tmp_path, fake, max_outputs=16) as h:
        with_key(h)
        job_id, pid = await new_prediction(h)
        fake.finish(pid)
        h.clock.advance(h.settings.poll_after)
        await sweep_once(h.rt)
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.FAILED and "20 result files" in (job.error or "")
        assert await h.rt.store.files(job_id) == [] and not fake.downloads


# -- a callback must name its provider task ------------------------------------------------------------

@pytest.mark.parametrize("body", [{"status": "Ready", "result": {"sample": "http://sim.test/x.png"}},
                                  {"status": "Error"}, {"status": "Pending"}], ids=["ready", "error", "pending"])
async def test_a_callback_without_an_id_is_refused(tmp_path: Path, body: dict[str, Any]) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        response = await post(h, "bfl", job_id, json.dumps(body).encode())
        assert response.status_code == 400 and "no id" in response.json()["error"]
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUBMITTED and await h.rt.store.files(job_id) == []

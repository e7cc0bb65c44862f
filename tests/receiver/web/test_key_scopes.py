"""API key scopes (FLUXHOOK_API_KEYS `NAME:SCOPE:KEY`): what `admin`, `submit` and `read` keys may see and do,
on /v1, /v1/events, /metrics and /ui."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config.keys import parse_api_keys
from tests.harness import Harness
from tests.receiver.web.test_api import BODY, api_harness, drive
from tests.receiver.web.test_api_events import SSE

pytestmark = pytest.mark.anyio

ADMIN = "ops-key-0123456789abcdef"   # a bare key, as before scopes: admin
CI = "ci-key-0123456789abcdef"
WEB = "web-key-0123456789abcdef"
DASH = "dash-key-0123456789abcdef"
KEYS = (ADMIN, f"ci:submit:{CI}", f"web:submit:{WEB}", f"grafana:read:{DASH}")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgres"])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with api_harness(tmp_path, request.param, keys=KEYS, sse_heartbeat=0.05) as harnessed:
        harnessed.client.headers.pop("authorization")
        yield harnessed


async def create(h: Harness, key: str, **body: Any) -> dict[str, Any]:
    answer = await h.client.post("/v1/jobs", json={**BODY, **body}, headers=bearer(key))
    assert answer.status_code == 201, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def listed(h: Harness, key: str) -> list[str]:
    answer = await h.client.get("/v1/jobs", headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return [j["id"] for j in answer.json()["jobs"]]


async def test_each_job_records_the_key_that_created_it(h: Harness) -> None:
    mine = await create(h, CI)
    assert mine["created_by"] == "ci"
    legacy = await create(h, ADMIN)
    assert legacy["created_by"].startswith("key-") and len(legacy["created_by"]) == 12


async def test_a_submit_key_sees_and_touches_only_its_own_jobs(h: Harness) -> None:
    ci_job = (await create(h, CI))["id"]
    web_job = (await create(h, WEB))["id"]
    await drive(h, ci_job)
    await drive(h, web_job)
    assert await listed(h, CI) == [ci_job]
    assert await listed(h, WEB) == [web_job]
    for path in (f"/v1/jobs/{web_job}", f"/v1/jobs/{web_job}?wait=5", f"/v1/jobs/{web_job}/files/0"):
        answer = await h.client.get(path, headers=bearer(CI))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", path
    answer = await h.client.post(f"/v1/jobs/{web_job}/cancel", headers=bearer(CI))
    assert answer.status_code == 404
    assert (await h.client.get(f"/v1/jobs/{ci_job}/files/0", headers=bearer(CI))).status_code == 200
    assert (await h.client.get(f"/v1/jobs/{web_job}", headers=bearer(WEB))).json()["status"] == "stored"


async def test_admin_and_read_keys_see_every_job(h: Harness) -> None:
    ids = {(await create(h, CI))["id"], (await create(h, WEB))["id"]}
    for key in (ADMIN, DASH):
        assert set(await listed(h, key)) == ids
        for job_id in ids:
            assert (await h.client.get(f"/v1/jobs/{job_id}", headers=bearer(key))).status_code == 200


async def test_a_read_key_creates_and_cancels_nothing(h: Harness) -> None:
    job_id = (await create(h, CI))["id"]
    answer = await h.client.post("/v1/jobs", json=BODY, headers=bearer(DASH))
    assert answer.status_code == 403
    assert "grafana" in answer.json()["error"]["message"] and DASH not in answer.text
    assert (await h.client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(DASH))).status_code == 403
    assert await listed(h, ADMIN) == [job_id]
    # an admin key cancels anyone's job
    answer = await h.client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(ADMIN))
    assert answer.status_code == 200 and answer.json()["status"] == "canceled"


async def test_a_submit_keys_event_stream_has_only_its_jobs(h: Harness) -> None:
    web_job = (await create(h, WEB))["id"]
    ci_job = (await create(h, CI))["id"]
    await drive(h, web_job)
    await drive(h, ci_job)
    async with SSE(h.app, {"after": "0"}, headers=bearer(CI)) as sse:
        assert sse.status == 200
        seen = await sse.events(1)
    stored = [e for e in await h.rt.store.events_after(0) if e.type == "job.stored"]
    ours = [e for e in await h.rt.store.events_after(0) if e.job_id == ci_job]
    assert {e.job_id for e in stored} == {web_job, ci_job}
    assert [e["id"] for e in seen] == [ours[0].id]  # the first event it gets is its own job's first
    async with SSE(h.app, {"after": "0", "job": web_job}, headers=bearer(CI)) as sse:
        assert sse.status == 200
        with pytest.raises(TimeoutError):  # another key's job: heartbeats only
            await sse.events(1, within=0.5)
    async with SSE(h.app, {"after": "0"}, headers=bearer(DASH)) as sse:
        every = await sse.events(len(await h.rt.store.events_after(0)))
    assert {e["data"]["id"] for e in every} == {web_job, ci_job}


async def test_metrics_take_admin_and_read_keys_only(h: Harness) -> None:
    for key, status in ((ADMIN, 200), (DASH, 200), (CI, 401), ("nope-0123456789abcdef", 401)):
        answer = await h.client.get("/metrics", headers=bearer(key))
        assert answer.status_code == status, key
    assert (await h.client.get("/metrics")).status_code == 401


async def test_only_submit_keys_still_close_metrics(tmp_path: Path) -> None:
    async with api_harness(tmp_path, keys=(f"ci:submit:{CI}",)) as h:
        h.client.headers.pop("authorization")
        assert (await h.client.get("/metrics")).status_code == 401
        assert (await h.client.get("/metrics", headers=bearer(CI))).status_code == 401


async def login(h: Harness, key: str) -> httpx.Response:
    h.client.cookies.clear()
    answer = await h.client.post("/ui/login", data={"key": key, "next": "/ui/jobs"})
    assert answer.status_code == 303, answer.text
    return answer


async def test_the_ui_shows_a_submit_key_only_its_jobs(h: Harness) -> None:
    ci_job = (await create(h, CI, params={"prompt": "ci's fox"}))["id"]
    web_job = (await create(h, WEB, params={"prompt": "web's owl"}))["id"]
    await drive(h, ci_job)
    await drive(h, web_job)
    await login(h, CI)
    table = (await h.client.get("/ui/jobs")).text
    assert ci_job in table and web_job not in table
    assert "0 job(s)" in (await h.client.get(f"/ui/jobs?q={web_job}")).text
    assert "1 job(s)" in (await h.client.get(f"/ui/jobs?q={ci_job}")).text
    gallery = (await h.client.get("/ui")).text
    assert "ci&#39;s fox" in gallery and "web&#39;s owl" not in gallery
    assert (await h.client.get(f"/ui/jobs/{web_job}")).status_code == 404
    assert (await h.client.get(f"/ui/jobs/{web_job}/files/0")).status_code == 404
    assert (await h.client.get(f"/ui/jobs/{ci_job}/files/0")).status_code == 200
    await login(h, DASH)
    table = (await h.client.get("/ui/jobs")).text
    assert ci_job in table and web_job in table
    assert (await h.client.get(f"/ui/jobs/{web_job}/files/0")).status_code == 200


async def test_only_admin_keys_trigger_a_sweep(h: Harness) -> None:
    """No FLUXHOOK_SWEEP_TOKEN here: an admin key may still run a pass; submit and read keys may not."""
    for key in (CI, DASH):
        answer = await h.client.post("/v1/sweep", headers=bearer(key))
        assert answer.status_code == 401, key
    answer = await h.client.post("/v1/sweep", headers=bearer(ADMIN))
    assert answer.status_code == 200 and "claimed" in answer.json()


async def test_operator_details_take_admin_and_read_keys_only(h: Harness) -> None:
    for key, operator in ((ADMIN, True), (DASH, True), (CI, False)):
        health = (await h.client.get("/healthz", headers=bearer(key))).json()
        assert ("callbacks" in health) is operator, key
        ready = (await h.client.get("/readyz", headers=bearer(key))).json()
        assert ready["ready"] is True and ("problems" not in ready or operator), key


async def test_a_submit_keys_provider_panel_counts_only_its_jobs(h: Harness) -> None:
    for key in (CI, WEB, WEB):
        await create(h, key)
    await login(h, CI)
    mine = (await h.client.get("/ui/providers")).text
    await login(h, DASH)
    every = (await h.client.get("/ui/providers")).text
    assert bfl_jobs_last_hour(mine) == "1" and bfl_jobs_last_hour(every) == "3"


def bfl_jobs_last_hour(html: str) -> str:
    """The Jobs column of the panel's bfl row for the last hour."""
    found = re.search(r'<th scope="row">bfl</th><td>last hour</td><td>([0-9]+)</td>', html)
    assert found is not None, html
    return found[1]


async def test_a_renamed_key_cannot_replay_its_way_to_an_earlier_job(h: Harness) -> None:
    """Idempotency-Keys are scoped by the key's secret; a job another name created stays out of reach."""
    first = await h.client.post("/v1/jobs", json=BODY, headers={**bearer(CI), "idempotency-key": "k1"})
    assert first.status_code == 201
    renamed = parse_api_keys(f"builder:submit:{CI}")
    h.rt.settings = dataclasses.replace(h.rt.settings, integrations=dataclasses.replace(
        h.rt.settings.integrations, api_keys=renamed))
    assert (await h.client.get(f"/v1/jobs/{first.json()['id']}", headers=bearer(CI))).status_code == 404
    again = await h.client.post("/v1/jobs", json=BODY, headers={**bearer(CI), "idempotency-key": "k1"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "idempotency_conflict"
    assert first.json()["id"] not in again.text

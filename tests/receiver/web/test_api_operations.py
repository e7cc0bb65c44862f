"""`GET /v1/jobs/{id}/timeline`, `POST /v1/jobs/{id}/retry`, `GET /v1/report` and a file's `?expires=`, in-process
on SQLite and PostgreSQL, with every key scope: what `fluxhook events|retry|report` show through FLUXHOOK_API_URL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config.integrations import TERMINAL_EVENTS, Integrations
from receiver.config.keys import parse_api_keys
from receiver.engine.report import COLUMNS, report
from receiver.web.api.models import ReportRow
from submitter.simulator import Faults
from submitter.status import Status
from tests.harness import Harness, harness
from tests.receiver.store.test_store import BACKENDS
from tests.receiver.web.test_api import BODY, drive
from tests.receiver.web.test_key_scopes import ADMIN, CI, DASH, KEYS, WEB, bearer

pytestmark = pytest.mark.anyio

SINK = ("webhook:0123abcd", "webhook", "https://hooks.partner.example/in")


class SpoiledCdn(httpx.AsyncBaseTransport):
    """The result host: while `spoiled`, it answers every download with an HTML page (a download fluxhook
    refuses for good: the job ends `failed` after the provider delivered, as when a proxy intercepts)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.spoiled = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.spoiled:
            return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>sign in</html>")
        return await self.inner.handle_async_request(request)


@dataclasses.dataclass
class Served:
    h: Harness
    cdn: SpoiledCdn


@pytest.fixture(params=["sqlite", "postgres"])
async def s(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(",".join(KEYS)))
    box: dict[str, SpoiledCdn] = {}

    class Late(httpx.AsyncBaseTransport):  # the simulator exists only inside the harness
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await box["cdn"].handle_async_request(request)

    async with BACKENDS[request.param](tmp_path) as store, harness(
        tmp_path, store=store, integrations=integrations, cdn_transport=Late()
    ) as h:
        box["cdn"] = SpoiledCdn(httpx.ASGITransport(h.sim.app))
        yield Served(h, box["cdn"])


async def create(h: Harness, key: str, prompt: str = "a fox") -> str:
    answer = await h.client.post("/v1/jobs", json={**BODY, "params": {"prompt": prompt}}, headers=bearer(key))
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def failed_download(s: Served, key: str) -> str:
    """A job of `key` the provider delivered and we could not store: `failed`, its file not stored."""
    s.cdn.spoiled = True
    job_id = await create(s.h, key)
    assert await drive(s.h, job_id, frozenset({Status.FAILED})) == Status.FAILED
    s.cdn.spoiled = False
    return job_id


async def test_timeline_shows_callbacks_events_and_deliveries_to_operators_only(s: Served) -> None:
    h = s.h
    await h.rt.store.register_sink(*SINK, now=h.clock())
    job_id = await create(h, CI)
    await drive(h, job_id)
    assert await h.rt.store.fan_out(SINK[0], TERMINAL_EVENTS, now=h.clock()) >= 1

    answer = await h.client.get(f"/v1/jobs/{job_id}/timeline", headers=bearer(CI))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["job"]["id"] == job_id and body["job"]["status"] == "stored"
    rows = body["timeline"]
    kinds = [r["kind"] for r in rows]
    assert kinds[:2] == ["created", "submitted"] and "callback" in kinds and "event" in kinds
    assert "delivery" not in kinds and SINK[2] not in answer.text  # the operator's sinks are not the key's to see
    callback = next(r for r in rows if r["kind"] == "callback")
    assert isinstance(callback["id"], int) and callback["detail"].startswith("accepted") and "said" in callback["detail"]
    assert any(r["kind"] == "event" and r["detail"] == "job.stored" and r["id"].startswith("evt_") for r in rows)
    assert all(r["at"].endswith("Z") for r in rows)
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)

    for key in (ADMIN, DASH):  # operators see the deliveries too
        rows = (await h.client.get(f"/v1/jobs/{job_id}/timeline", headers=bearer(key))).json()["timeline"]
        delivery = next(r for r in rows if r["kind"] == "delivery")
        assert SINK[2] in delivery["detail"] and "pending" in delivery["detail"]


async def test_a_submit_key_cannot_read_another_keys_timeline(s: Served) -> None:
    job_id = await create(s.h, WEB)
    for path in (f"/v1/jobs/{job_id}/timeline", "/v1/jobs/fh_nobody/timeline"):
        answer = await s.h.client.get(path, headers=bearer(CI))
        assert answer.status_code == 404 and answer.json()["error"] == {"code": "not_found", "message": "unknown job"}
    assert (await s.h.client.get(f"/v1/jobs/{job_id}/timeline")).status_code == 401
    assert (await s.h.client.get(f"/v1/jobs/{job_id}/timeline", headers=bearer(WEB))).status_code == 200


async def test_retry_downloads_a_failed_download_again(s: Served) -> None:
    h = s.h
    job_id = await failed_download(s, CI)
    failed = (await h.client.get(f"/v1/jobs/{job_id}", headers=bearer(CI))).json()
    assert failed["status"] == "failed" and failed["files"] == []
    seq = await h.rt.store.last_seq()

    answer = await h.client.post(f"/v1/jobs/{job_id}/retry", headers=bearer(CI))
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded" and answer.json()["error"] is None
    assert h.rt.downloads_due.is_set()  # `serve`'s download loop is woken at once
    assert await h.rt.store.last_seq() == seq  # reopening writes no event; the job's next end does
    again = await h.client.post(f"/v1/jobs/{job_id}/retry", headers=bearer(CI))
    assert again.status_code == 200 and again.json()["status"] == "succeeded"  # a repeated retry changes nothing

    assert await drive(h, job_id) == Status.STORED
    stored = (await h.client.get(f"/v1/jobs/{job_id}", headers=bearer(CI))).json()
    assert stored["status"] == "stored" and len(stored["files"]) == 1
    answer = await h.client.post(f"/v1/jobs/{job_id}/retry", headers=bearer(CI))
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "not_retryable" and "it is stored" in answer.json()["error"]["message"]


async def test_retry_scopes_and_refusals(s: Served) -> None:
    h = s.h
    theirs = await failed_download(s, WEB)
    answer = await h.client.post(f"/v1/jobs/{theirs}/retry", headers=bearer(CI))  # another submit key's job
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    answer = await h.client.post(f"/v1/jobs/{theirs}/retry", headers=bearer(DASH))  # a read key
    assert answer.status_code == 403 and "retrying" in answer.json()["error"]["message"] and DASH not in answer.text
    assert (await h.rt.store.get_job(theirs)).status == Status.FAILED  # type: ignore[union-attr]
    assert (await h.client.post("/v1/jobs/fh_nobody/retry", headers=bearer(ADMIN))).status_code == 404
    answer = await h.client.post(f"/v1/jobs/{theirs}/retry", headers=bearer(ADMIN))  # admin: anyone's job
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded"

    h.sim.add_rule("doomed", Faults(outcome="error"))
    doomed = await create(h, CI, "doomed fox")
    assert await drive(h, doomed, frozenset({Status.FAILED})) == Status.FAILED
    answer = await h.client.post(f"/v1/jobs/{doomed}/retry", headers=bearer(CI))
    assert answer.status_code == 409 and "never reported a result" in answer.json()["error"]["message"]
    queued = await create(h, CI, "not yet")
    answer = await h.client.post(f"/v1/jobs/{queued}/retry", headers=bearer(CI))
    assert answer.status_code == 409 and "it is queued" in answer.json()["error"]["message"]


async def test_report_counts_what_the_key_may_see(s: Served) -> None:
    h = s.h
    await failed_download(s, CI)
    mine = await create(h, CI)
    await drive(h, mine)
    await create(h, WEB)

    def total(answer: httpx.Response) -> dict[str, Any]:
        assert answer.status_code == 200, answer.text
        rows = answer.json()["providers"]
        assert rows[-1]["provider"] == "total" and set(rows[-1]) == set(COLUMNS)
        return dict(rows[-1])

    for key in (ADMIN, DASH):
        every = total(await h.client.get("/v1/report", headers=bearer(key)))
        assert every["jobs"] == 3 and every["stored"] == 1 and every["paid_not_delivered"] == 1
    ci = await h.client.get("/v1/report", headers=bearer(CI))
    assert total(ci)["jobs"] == 2 and total(ci)["failed_download"] == 1 and total(ci)["in_progress"] == 0
    assert ci.json() == await report(h.rt, None, created_by="ci")  # what `fluxhook report --json` prints
    assert ci.json()["since"] is None and ci.json()["orphan_callbacks"] is None
    assert total(await h.client.get("/v1/report", headers=bearer(WEB)))["jobs"] == 1

    later = await h.client.get("/v1/report", params={"since": "2100-01-01T00:00:00Z"}, headers=bearer(ADMIN))
    assert later.status_code == 200 and later.json()["providers"] == []
    assert later.json()["since"] == "2100-01-01T00:00:00.000Z"
    naive = await h.client.get("/v1/report", params={"since": "2100-01-01"}, headers=bearer(ADMIN))
    assert naive.json()["since"] == "2100-01-01T00:00:00.000Z"  # no offset: UTC
    for bad in ("yesterday", "24h", "x" * 70):
        answer = await h.client.get("/v1/report", params={"since": bad}, headers=bearer(ADMIN))
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "since"
    assert (await h.client.get("/v1/report")).status_code == 401


def test_the_report_model_has_every_column() -> None:
    assert tuple(ReportRow.model_fields) == COLUMNS


async def test_a_file_url_lives_as_long_as_asked(s: Served) -> None:
    h = s.h
    job_id = await create(h, CI)
    await drive(h, job_id)
    answer = await h.client.get(f"/v1/jobs/{job_id}/files/0", params={"expires": "60"}, headers=bearer(CI))
    assert answer.status_code == 200 and answer.headers["cache-control"] == "private, max-age=60"
    for bad in ("0", "604801", "1.5", "-1", "soon"):
        answer = await h.client.get(f"/v1/jobs/{job_id}/files/0", params={"expires": bad}, headers=bearer(CI))
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "expires", bad

"""The /v1 jobs API in-process (httpx ASGITransport), on SQLite and PostgreSQL, with the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.engine.sweep import sweep_once
from submitter.bodies import Observation
from submitter.simulator import Faults
from submitter.status import Status
from tests.harness import Harness, harness
from tests.receiver.store.test_store import BACKENDS

pytestmark = pytest.mark.anyio

KEY = "api-key-0123456789abcdef"
OTHER_KEY = "api-key-other-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
BODY = {"provider": "bfl", "model": "flux-dev", "params": {"prompt": "a fox"}}


@contextlib.asynccontextmanager
async def api_harness(tmp_path: Path, kind: str = "sqlite", *, keys: tuple[str, ...] = (KEY, OTHER_KEY),
                      faults: Faults | None = None, **integrations: Any) -> AsyncIterator[Harness]:
    settings_integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(",".join(keys)),
                                                 **integrations)
    async with BACKENDS[kind](tmp_path) as store, harness(
        tmp_path, store=store, faults=faults, integrations=settings_integrations
    ) as h:
        h.client.headers.update(AUTH)
        yield h


@pytest.fixture(params=["sqlite", "postgres"])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with api_harness(tmp_path, request.param) as harnessed:
        yield harnessed


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[Harness]:
    async with api_harness(tmp_path) as harnessed:
        yield harnessed


async def drive(h: Harness, job_id: str, until: frozenset[Status] = frozenset({Status.STORED})) -> Status:
    """Run sweeps and deliver the simulator's callbacks until the job reaches one of `until`."""
    status = Status.QUEUED
    for _ in range(6):
        await sweep_once(h.rt)
        await h.settle()
        job = await h.rt.store.get_job(job_id)
        assert job is not None
        status = job.status
        if status in until:
            return status
        h.clock.advance(h.settings.poll_after)
    raise AssertionError(f"job {job_id} stuck in {status}")


async def create(h: Harness, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return await h.client.post("/v1/jobs", json=BODY if body is None else body, headers=headers)


async def test_create_then_stored_with_files(h: Harness) -> None:
    answer = await create(h, {**BODY, "metadata": {"order": 7}})
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["files"] == [] and job["metadata"] == {"order": 7}
    assert (await h.rt.store.get_job(job["id"])) is not None  # in the ledger before the answer
    assert await drive(h, job["id"]) == Status.STORED
    got = (await h.client.get(f"/v1/jobs/{job['id']}")).json()
    assert got["status"] == "stored" and got["provider_job_id"] and got["metadata"] == {"order": 7}
    (file,) = got["files"]
    assert file["n"] == 0 and file["url"] == f"/v1/jobs/{job['id']}/files/0"
    served = await h.client.get(file["url"])
    assert served.status_code == 200
    assert served.content.startswith(b"\x89PNG") and hashlib.sha256(served.content).hexdigest() == file["sha256"]
    assert len(served.content) == file["size"]
    assert (await h.client.get(f"/v1/jobs/{job['id']}/files/1")).json()["error"]["code"] == "not_found"
    assert (await h.client.get(f"/v1/jobs/{job['id']}/files/x")).status_code == 404
    assert (await h.client.get("/v1/jobs/fh_nope/files/0")).status_code == 404


async def test_idempotent_create(h: Harness) -> None:
    first = await create(h, **{"idempotency-key": "order-1"})
    assert first.status_code == 201
    again = await create(h, **{"idempotency-key": "order-1"})
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    changed = await create(h, {**BODY, "params": {"prompt": "another"}}, **{"idempotency-key": "order-1"})
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "idempotency_conflict"
    # Keys are scoped per API key: another key's "order-1" is another job.
    other = await h.client.post("/v1/jobs", json=BODY, headers={"idempotency-key": "order-1",
                                                                "authorization": f"Bearer {OTHER_KEY}"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert len(await h.rt.store.list_jobs()) == 2


async def test_concurrent_creates_with_one_key_make_one_job(h: Harness) -> None:
    answers = await asyncio.gather(*(create(h, **{"idempotency-key": "race"}) for _ in range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(await h.rt.store.list_jobs()) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "é"])
async def test_bad_idempotency_key(lite: Harness, key: str) -> None:
    answer = await lite.client.post("/v1/jobs", json=BODY, headers={"idempotency-key": key.encode("utf-8")})  # type: ignore[dict-item]
    assert answer.status_code == 400
    assert answer.json()["error"] == {"code": "invalid", "field": "Idempotency-Key", "message": answer.json()["error"]["message"]}


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    (b"{", 400, "bad_json", None),
    (b"[1]", 400, "bad_json", None),
    (b'"x"', 400, "bad_json", None),
    (b"\xff\xfe", 400, "bad_json", None),
    (b'{"model": "flux-dev", "params": {}}', 422, "invalid", "provider"),
    (b'{"provider": 1, "model": "flux-dev", "params": {}}', 422, "invalid", "provider"),
    (b'{"provider": "nope", "model": "flux-dev", "params": {}}', 422, "invalid", "provider"),
    (b'{"provider": "bfl", "params": {}}', 422, "invalid", "model"),
    (b'{"provider": "bfl", "model": ["x"], "params": {}}', 422, "invalid", "model"),
    (b'{"provider": "bfl", "model": "../etc", "params": {}}', 422, "invalid", "model"),
    (b'{"provider": "bfl", "model": "flux-dev"}', 422, "invalid", "params"),
    (b'{"provider": "bfl", "model": "flux-dev", "params": [1]}', 422, "invalid", "params"),
    (b'{"provider": "bfl", "model": "flux-dev", "params": {}, "events": ["completed"]}', 422, "invalid", "events"),
    (b'{"provider": "replicate", "model": "a/b", "params": {}, "events": ["start"]}', 422, "invalid", "events"),
    (b'{"provider": "replicate", "model": "a/b", "params": {}, "events": "completed"}', 422, "invalid", "events"),
    (b'{"provider": "replicate", "model": "a/b", "params": {}, "events": [1]}', 422, "invalid", "events.0"),
    (b'{"provider": "bfl", "model": "flux-dev", "params": {}, "metadata": [1]}', 422, "invalid", "metadata"),
    (b'{"provider": "bfl", "model": "flux-dev", "params": {}, "extra": 1}', 422, "invalid", "extra"),
    (b'{"provider": "bfl", "model": "flux-dev", "params": {"p": "\\ud800"}}', 400, "bad_json", None),
    # Not JSON numbers (RFC 8259): stored, they would break every later answer and event of the job.
    (b'{"provider": "bfl", "model": "flux-dev", "params": {}, "metadata": {"a": NaN}}', 400, "bad_json", None),
    (b'{"provider": "bfl", "model": "flux-dev", "params": {"w": Infinity}}', 400, "bad_json", None),
    (b'{"provider": "bfl", "model": "flux-dev", "params": {"w": -1e400}}', 400, "bad_json", None),
])
async def test_validation(lite: Harness, body: bytes, status: int, code: str, field: str | None) -> None:
    answer = await lite.client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error.get("field") == field and error["message"]
    assert await lite.rt.store.list_jobs() == []


async def test_caps(lite: Harness) -> None:
    big = await create(lite, {**BODY, "metadata": {"x": "y" * 17000}})
    assert big.status_code == 422 and big.json()["error"]["field"] == "metadata"
    huge = await create(lite, {**BODY, "params": {"x": "y" * 300_000}})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    ok = await create(lite, {**BODY, "events": None, "metadata": {"x": "y" * 16000}})
    assert ok.status_code == 201


ROUTES = [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/fh_x"), ("POST", "/v1/jobs/fh_x/cancel"),
          ("GET", "/v1/jobs/fh_x/files/0"), ("GET", "/v1/events"), ("GET", "/openapi.json")]


async def test_api_off_without_keys(tmp_path: Path) -> None:
    async with api_harness(tmp_path, keys=()) as h:
        for method, path in ROUTES:
            answer = await h.client.request(method, path, json=BODY)
            assert answer.status_code == 404, (method, path)
            assert answer.json() == {"error": {"code": "not_found", "message": "the API is off: set FLUXHOOK_API_KEYS"}}


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer wrong-key-0123456789", f"Basic {KEY}",
                                           f"Bearer {KEY}x", "Bearer \u00e9\u00e9"])
async def test_missing_or_wrong_key(lite: Harness, authorization: str | None, caplog: pytest.LogCaptureFixture) -> None:
    lite.client.headers.pop("authorization")
    headers = {} if authorization is None else {"authorization": authorization.encode()}
    for method, path in ROUTES:
        answer = await lite.client.request(method, path, json=BODY, headers=headers)  # type: ignore[arg-type]
        assert answer.status_code == 401, (method, path)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "unauthorized"
        assert KEY not in answer.text and "wrong-key" not in answer.text
    assert KEY not in caplog.text
    assert await lite.rt.store.list_jobs() == []


async def test_get_unknown_and_bad_wait(lite: Harness) -> None:
    missing = await lite.client.get("/v1/jobs/fh_missing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    job = (await create(lite)).json()
    for wait in ("-1", "61", "abc", "nan", "inf", "1e3", ""):
        answer = await lite.client.get(f"/v1/jobs/{job['id']}", params={"wait": wait})
        assert answer.status_code == 422 and answer.json()["error"]["field"] == "wait", wait
    for wait in ("0", "0.0", "1e-3", ".01", "2.5e-2"):
        answer = await lite.client.get(f"/v1/jobs/{job['id']}", params={"wait": wait})
        assert answer.status_code == 200 and answer.json()["status"] == "queued", wait


async def test_list_pages_with_a_cursor(h: Harness) -> None:
    made = []
    for n in range(7):
        if n % 2:  # some share a creation time: the id breaks the tie
            h.clock.advance(1)
        made.append((await create(h, {**BODY, "params": {"n": n}})).json()["id"])
    h.clock.advance(1)
    replicate = (await create(h, {"provider": "replicate", "model": "a/b", "params": {}})).json()["id"]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "provider": "bfl"}
        if cursor:
            params["cursor"] = cursor
        page = (await h.client.get("/v1/jobs", params=params)).json()
        assert len(page["jobs"]) <= 3
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 7 and set(seen) == set(made)
    every = (await h.client.get("/v1/jobs")).json()
    assert every["jobs"][0]["id"] == replicate and every["next_cursor"] is None
    created = [(j["created_at"], j["id"]) for j in every["jobs"]]
    assert created == sorted(created, reverse=True)
    assert (await h.client.get("/v1/jobs", params={"status": "stored"})).json() == {"jobs": [], "next_cursor": None}
    queued = (await h.client.get("/v1/jobs", params={"status": "queued", "limit": 200})).json()
    assert len(queued["jobs"]) == 8


@pytest.mark.parametrize(("name", "value"), [
    ("status", "done"), ("provider", "nope"), ("limit", "0"), ("limit", "201"), ("limit", "x"), ("limit", "-1"),
    ("cursor", "!!"), ("cursor", "bm90IGpzb24"), ("cursor", "WzEsMl0"),
])
async def test_list_rejects(lite: Harness, name: str, value: str) -> None:
    answer = await lite.client.get("/v1/jobs", params={name: value})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == name


async def test_cancel(h: Harness) -> None:
    job = (await create(h)).json()
    canceled = await h.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    await sweep_once(h.rt)
    await h.settle()
    assert h.sim.stats()["totals"]["submit_requests"] == 0  # never submitted
    again = await h.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert (await h.client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "canceled"
    done = (await create(h)).json()
    await drive(h, done["id"])
    refused = await h.client.post(f"/v1/jobs/{done['id']}/cancel")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_cancelable"
    # Results reported, files being stored: too late to cancel.
    paid = (await create(h)).json()
    await h.rt.store.apply(paid["id"], Observation("p-paid", Status.SUCCEEDED, "Ready", urls=("http://sim.test/x.png",)),
                           now=h.clock.now, next_check_at=None, expires=(h.clock.now + 3600,))
    late = await h.client.post(f"/v1/jobs/{paid['id']}/cancel")
    assert late.status_code == 409 and late.json()["error"]["code"] == "not_cancelable"
    assert (await h.rt.store.get_job(paid["id"])).status == Status.SUCCEEDED  # type: ignore[union-attr]
    missing = await h.client.post("/v1/jobs/fh_missing/cancel")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_long_poll_answers_when_the_job_finishes(h: Harness) -> None:
    job = (await create(h)).json()
    waiting = asyncio.create_task(h.client.get(f"/v1/jobs/{job['id']}", params={"wait": "30"}))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await drive(h, job["id"])
    answer = await asyncio.wait_for(waiting, 20)
    assert answer.status_code == 200 and answer.json()["status"] == "stored"
    # Already finished: at once.
    assert (await h.client.get(f"/v1/jobs/{job['id']}", params={"wait": "30"})).json()["status"] == "stored"


async def test_long_poll_times_out_with_the_status_then(h: Harness) -> None:
    job = (await create(h)).json()
    answer = await h.client.get(f"/v1/jobs/{job['id']}", params={"wait": "0.2"})
    assert answer.status_code == 200 and answer.json()["status"] == "queued"


async def test_store_down_is_503(lite: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver.store import StoreUnavailable

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(lite.rt.store, "get_job", down)
    answer = await lite.client.get("/v1/jobs/fh_x")
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert answer.json()["error"]["code"] == "unavailable"


async def test_object_storage_files_redirect_to_a_presigned_url(lite: Harness) -> None:
    class Bucket:  # what the route needs of an object store: a presigned GET
        async def presign(self, path: str, expires: float) -> str:
            return f"https://bucket.test/{path}?X-Amz-Expires={int(expires)}"

        def location(self, path: str) -> str:
            return f"s3://bucket/{path}"

    job = (await create(lite)).json()
    await drive(lite, job["id"])
    lite.rt.results = Bucket()  # type: ignore[assignment]
    answer = await lite.client.get(f"/v1/jobs/{job['id']}/files/0")
    assert answer.status_code == 307
    assert answer.headers["location"].startswith(f"https://bucket.test/{job['id']}/0.png?")
    assert (await lite.client.get(f"/v1/jobs/{job['id']}")).json()["files"][0]["location"] == f"s3://bucket/{job['id']}/0.png"

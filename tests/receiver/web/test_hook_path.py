"""The callback's shortcut past the router (receiver/web/callbacks.py: CallbackShortcut): the same
answers, the same error handlers, and the router's answers for whatever the shortcut leaves."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from receiver.store import StoreUnavailable
from submitter.signing import derive_job_keys, sign_bfl
from tests.harness import MASTER, PUBLIC, Harness, harness
from tests.receiver.web.test_app import a_job, hook_path

pytestmark = pytest.mark.anyio


def progress(task: str, n: int) -> bytes:
    return json.dumps({"id": task, "status": "Pending", "progress": n}).encode()


def signed(job_id: str, body: bytes) -> dict[str, str]:
    return {"x-bfl-signature": sign_bfl(derive_job_keys(MASTER, "bfl", job_id).webhook_secret, body)}


async def submitted(h: Harness) -> tuple[str, str, str]:
    """A BFL job at the provider whose callback has not come: (job id, provider task id, hook path)."""
    job_id = await a_job(h)
    job = await h.rt.store.get_job(job_id)
    assert job is not None and job.provider_job_id
    return job_id, job.provider_job_id, hook_path("bfl", job_id)


async def test_a_callback_under_a_root_path_goes_through_the_route_with_the_same_answers(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id, task, path = await submitted(h)
        body = progress(task, 10)
        prefixed = httpx.AsyncClient(transport=httpx.ASGITransport(h.app, root_path="/fluxhook"), base_url=PUBLIC)
        async with prefixed:
            first = await prefixed.post("/fluxhook" + path, content=body, headers=signed(job_id, body))
            again = await h.client.post(path, content=body, headers=signed(job_id, body))  # the shortcut
            repeat = await prefixed.post("/fluxhook" + path, content=body, headers=signed(job_id, body))
            forged = await prefixed.post("/fluxhook" + path + "x", content=body, headers=signed(job_id, body))
        assert (first.status_code, first.json()) == (200, {"ok": True, "status": "running"})
        assert (again.status_code, again.json()) == (200, {"ok": True, "duplicate": True})
        assert (repeat.status_code, repeat.json()) == (200, {"ok": True, "duplicate": True})
        assert forged.status_code == 401 and "token" in forged.json()["error"]
        assert first.headers["content-type"] == again.headers["content-type"] == "application/json"


async def test_the_shortcut_answers_errors_with_the_apps_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with harness(tmp_path) as h:
        job_id, task, path = await submitted(h)
        body = progress(task, 20)
        unknown = await h.client.post(path.replace("/bfl/", "/nope/"), content=body)
        assert unknown.status_code == 404 and unknown.json() == {"error": "unknown provider 'nope'"}

        async def down(*args: object, **kwargs: object) -> None:
            raise StoreUnavailable("database is locked")

        monkeypatch.setattr(h.rt.store, "apply", down)
        busy = await h.client.post(path, content=body, headers=signed(job_id, body))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"

        async def bug(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(h.rt.store, "apply", bug)
        quiet = httpx.AsyncClient(transport=httpx.ASGITransport(h.app, raise_app_exceptions=False), base_url=PUBLIC)
        async with quiet:
            crashed = await quiet.post(path, content=body, headers=signed(job_id, body))
        assert crashed.status_code == 500


async def test_what_the_shortcut_does_not_take_is_the_routers(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        assert (await h.client.get(hook_path("bfl", job_id))).status_code == 405
        assert (await h.client.post("/hooks/bfl/" + job_id)).status_code == 404  # no token segment
        assert (await h.client.post(hook_path("bfl", job_id) + "/")).status_code == 404  # no slash redirect


async def test_callback_at_is_when_the_latest_verified_callback_arrived(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id, task, path = await submitted(h)
        for n in (1, 2, 3):
            body = progress(task, n)
            assert (await h.client.post(path, content=body, headers=signed(job_id, body))).status_code == 200
            assert (await h.rt.store.get_job(job_id)).callback_at == h.clock()  # type: ignore[union-attr]
            h.clock.advance(30)

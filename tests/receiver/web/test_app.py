"""The callback endpoint, in-process through httpx's ASGITransport."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest

from receiver.engine.jobs import callback_url, submit
from receiver.engine.refusals import MISMATCH_NOTE
from submitter.signing import derive_job_keys, sign_bfl
from submitter.simulator import Faults
from submitter.status import Status
from tests import ledger
from tests.harness import MASTER, PUBLIC, Harness, harness

pytestmark = pytest.mark.anyio


async def a_job(h: Harness, provider: str = "bfl") -> str:
    h.sim.add_rule("hold", Faults(drop=True, runtime=1e9))
    job = await submit(h.rt, provider, "flux-dev", {"prompt": "hold"})
    assert job.status == Status.SUBMITTED
    return job.id


def hook_path(provider: str, job_id: str) -> str:
    url, _ = callback_url(PUBLIC, MASTER, provider, job_id)
    return url.removeprefix(PUBLIC)


def ready_body(provider_job_id: str, sample: str = "http://sim.test/delivery/x/sample.png?se=2100-01-01T00%3A00%3A00Z") -> bytes:
    return json.dumps({"id": provider_job_id, "status": "Ready", "result": {"sample": sample}}).encode()


async def post(h: Harness, provider: str, job_id: str, body: bytes, sign: bool = True, **headers: str) -> httpx.Response:
    keys = derive_job_keys(MASTER, provider, job_id)
    if sign:
        headers.setdefault("x-bfl-signature", sign_bfl(keys.webhook_secret, body))
    return await h.client.post(hook_path(provider, job_id), content=body, headers=headers)


async def test_verified_callback_moves_the_job_and_is_kept_for_audit(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        job = await h.rt.store.get_job(job_id)
        assert job is not None
        body = ready_body(job.provider_job_id or "")
        response = await post(h, "bfl", job_id, body, **{"x-webhook-secret": derive_job_keys(MASTER, "bfl", job_id).webhook_secret})
        assert response.status_code == 200, response.text
        assert response.json() == {"ok": True, "status": "succeeded"}
        assert (await h.rt.store.get_job(job_id)).status == Status.SUCCEEDED  # type: ignore[union-attr]
        assert h.rt.downloads_due.is_set()
        raw = await ledger.rows(h.rt.store, "SELECT headers, body, verdict FROM events")
        (row,) = raw
        # Kept as received, except for the result URL's signature (a secret: see receiver/obs/redaction.py).
        assert row["body"] == body.replace(b"?se=2100-01-01T00%3A00%3A00Z", b"?[redacted]")
        assert row["verdict"] == "accepted:hmac-sha256"
        assert json.loads(row["headers"])["x-webhook-secret"] == "[redacted]"


async def test_duplicates_answer_2xx_and_change_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        job = await h.rt.store.get_job(job_id)
        body = ready_body(job.provider_job_id or "")  # type: ignore[union-attr]
        answers = [await post(h, "bfl", job_id, body) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert [a.json().get("duplicate", False) for a in answers] == [False, True, True, True, True]
        assert await ledger.count_events(h.rt.store, job_id) == 1
        assert h.rt.metrics["accepted"] == 1 and h.rt.metrics["duplicate"] == 4


async def test_late_progress_never_undoes_success(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        pid = (await h.rt.store.get_job(job_id)).provider_job_id  # type: ignore[union-attr]
        assert (await post(h, "bfl", job_id, ready_body(pid))).status_code == 200
        late = json.dumps({"task_id": pid, "status": "processing", "progress": 50}).encode()
        response = await post(h, "bfl", job_id, late)
        assert response.status_code == 200 and response.json()["status"] == "succeeded"


@pytest.mark.parametrize("attack", ["wrong-token", "wrong-signature", "tampered-body", "wrong-secret-header",
                                    "other-provider", "other-job"])
async def test_forged_callbacks_are_401_and_leave_the_job_alone(tmp_path: Path, attack: str) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        other_id = await a_job(h)
        before = await h.rt.store.get_job(job_id)
        body = ready_body(before.provider_job_id or "")  # type: ignore[union-attr]
        secret = derive_job_keys(MASTER, "bfl", job_id).webhook_secret
        path = hook_path("bfl", job_id)
        headers = {"x-bfl-signature": sign_bfl(secret, body)}
        if attack == "wrong-token":
            path = path.rsplit("/", 1)[0] + "/" + "A" * 43
        elif attack == "wrong-signature":
            headers = {"x-bfl-signature": sign_bfl("guess", body)}
        elif attack == "tampered-body":
            body = body.replace(b"Ready", b"Error")
        elif attack == "wrong-secret-header":
            headers = {"x-webhook-secret": "guess"}
        elif attack == "other-provider":
            path = path.replace("/hooks/bfl/", "/hooks/deerapi/")
        elif attack == "other-job":
            path = hook_path("bfl", other_id).rsplit("/", 1)[0] + "/" + path.rsplit("/", 1)[1]
        response = await h.client.post(path, content=body, headers=headers)
        assert response.status_code == 401
        assert secret not in response.text
        after = await h.rt.store.get_job(job_id)
        if attack == "wrong-token":  # said on the job, nothing else changed (tests/.../test_token_mismatch_note.py)
            assert after is not None and after.note == MISMATCH_NOTE
            after = dataclasses.replace(after, note=before.note, updated_at=before.updated_at)  # type: ignore[union-attr]
        assert after == before
        assert await ledger.count_events(h.rt.store, job_id) == 0
        assert h.rt.metrics["rejected"] == 1


async def test_oversized_body_is_413_before_anything_else(tmp_path: Path) -> None:
    async with harness(tmp_path, max_body=1024) as h:
        job_id = await a_job(h)
        response = await post(h, "bfl", job_id, b"{" + b" " * 2000 + b"}")
        assert response.status_code == 413

        async def chunks():  # no Content-Length: the cap applies while streaming
            for _ in range(100):
                yield b" " * 512

        response = await h.client.post(hook_path("bfl", job_id), content=chunks())
        assert response.status_code == 413
        assert await ledger.count_events(h.rt.store, job_id) == 0


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"id": "x"}', b'{"status": 5}', b"\xff\xfe", b"[" * 50_000,
                                  b'{"id": "\\ud800", "status": "Ready", "result": {"sample": "https://x/\\udfff"}}'])
async def test_bad_bodies_are_400(tmp_path: Path, body: bytes) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        response = await post(h, "bfl", job_id, body)
        assert response.status_code == 400, response.text
        assert "error" in response.json()


async def test_unknown_job_and_provider_are_404(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        response = await post(h, "bfl", "fh_never_created", ready_body("x"))
        assert response.status_code == 404
        response = await h.client.post("/hooks/nope/j/t", content=b"{}")
        assert response.status_code == 404


async def test_callback_for_another_task_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        response = await post(h, "bfl", job_id, ready_body("someone-elses-task"))
        assert response.status_code == 422
        assert (await h.rt.store.get_job(job_id)).status == Status.SUBMITTED  # type: ignore[union-attr]


async def test_store_down_is_503_so_the_sender_retries(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        pid = (await h.rt.store.get_job(job_id)).provider_job_id  # type: ignore[union-attr]
        await h.rt.store.close()
        response = await post(h, "bfl", job_id, ready_body(pid or ""))
        assert response.status_code == 503
        assert response.headers["retry-after"]
        await h.rt.store.open()
        response = await post(h, "bfl", job_id, ready_body(pid or ""))
        assert response.status_code == 200  # the retry lands: nothing lost


async def test_health(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        response = await h.client.get("/healthz")
        assert response.status_code == 200 and response.json()["ok"] is True


async def test_callback_claiming_another_jobs_task_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        first = await a_job(h)
        taken = (await h.rt.store.get_job(first)).provider_job_id  # type: ignore[union-attr]
        # A job whose submit answer never came (so it has no provider task yet)...
        second = await h.rt.store.get_job(await a_job(h))
        await ledger.write(h.rt.store, "UPDATE jobs SET provider_job_id = NULL WHERE id = ?", (second.id,))  # type: ignore[union-attr]
        # ...receives a callback naming the first job's task.
        response = await post(h, "bfl", second.id, ready_body(taken or ""))  # type: ignore[union-attr]
        assert response.status_code == 422
        assert await ledger.count_events(h.rt.store, second.id) == 0  # type: ignore[union-attr]
        assert (await h.rt.store.get_job(second.id)).status == Status.SUBMITTED  # type: ignore[union-attr]


@pytest.mark.parametrize("length", ["abc", "\u00b2", "9" * 4400, "-1"])
async def test_a_garbage_content_length_is_400(tmp_path: Path, length: str) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        scope_headers = [(b"content-length", length.encode())]

        async def receive() -> dict:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": hook_path("bfl", job_id), "headers": scope_headers,
                 "query_string": b"", "http_version": "1.1", "scheme": "https", "server": ("hooks.test", 443),
                 "root_path": "", "client": ("127.0.0.1", 1)}
        await h.app(scope, receive, send)
        assert sent[0]["status"] == 400

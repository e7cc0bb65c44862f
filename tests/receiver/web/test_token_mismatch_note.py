"""A callback refused because its path token is not its job's (the job was submitted under another
FLUXHOOK_SECRET_KEY: two shells, two keys) is said on the job's note, once per job, with no secret in
it, and a flood of refused callbacks buys no store access per request (receiver/engine/refusals.py)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from receiver.engine.jobs import callback_url
from receiver.engine.refusals import MISMATCH_NOTE, NoteGate
from submitter.signing import derive_job_keys, sign_bfl
from submitter.status import Status
from tests.harness import MASTER, PUBLIC, Harness, harness, provider_id
from tests.receiver.web.test_app import a_job, ready_body

pytestmark = pytest.mark.anyio

OTHER_KEY = b"another-shells-key-0123456789abcdef-0123456789"


async def from_other_key(h: Harness, job_id: str, body: bytes) -> int:
    """POST `body` as a sender holding OTHER_KEY would: its token and signature, derived from that key."""
    url, _ = callback_url(PUBLIC, OTHER_KEY, "bfl", job_id)
    secret = derive_job_keys(OTHER_KEY, "bfl", job_id).webhook_secret
    response = await h.client.post(url.removeprefix(PUBLIC), content=body,
                                   headers={"x-bfl-signature": sign_bfl(secret, body)})
    return response.status_code


def count_calls(monkeypatch: pytest.MonkeyPatch, store: object, name: str) -> list[str]:
    calls: list[str] = []
    original = getattr(store, name)

    async def counted(job_id: str, *args: object, **kwargs: object) -> object:
        calls.append(job_id)
        return await original(job_id, *args, **kwargs)

    monkeypatch.setattr(store, name, counted)
    return calls


async def test_a_callback_under_another_key_is_said_on_the_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = ready_body(await provider_id(h, job_id))
        writes = count_calls(monkeypatch, h.rt.store, "set_note")
        for _ in range(5):  # the sender retries: one note, one write
            assert await from_other_key(h, job_id, body) == 401
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.note == MISMATCH_NOTE and job.status == Status.SUBMITTED
        assert writes == [job_id]
        assert "FLUXHOOK_SECRET_KEY" in job.note
        for secret in (MASTER, OTHER_KEY):
            assert secret.decode() not in job.note
        token = callback_url(PUBLIC, OTHER_KEY, "bfl", job_id)[0].rsplit("/", 1)[1]
        assert token not in job.note


async def test_a_note_already_there_is_not_written_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = ready_body(await provider_id(h, job_id))
        assert await from_other_key(h, job_id, body) == 401
        h.rt.note_gate = NoteGate(h.clock)  # another process, or this one restarted: it has seen nothing
        writes = count_calls(monkeypatch, h.rt.store, "set_note")
        assert await from_other_key(h, job_id, body) == 401
        assert writes == []


async def test_unknown_and_finished_jobs_get_no_note(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        await h.rt.store.finish(job_id, Status.CANCELED, now=h.clock(), reason="by test")
        body = ready_body(await provider_id(h, job_id))
        assert await from_other_key(h, job_id, body) == 401
        assert await from_other_key(h, "fh_" + uuid.uuid4().hex, body) == 401
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.note is None


async def test_a_flood_of_refused_callbacks_is_capped_in_store_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness(tmp_path) as h:
        lookups = count_calls(monkeypatch, h.rt.store, "get_job")
        body = json.dumps({"id": "x", "status": "Ready"}).encode()
        for _ in range(100):
            assert await from_other_key(h, "fh_" + uuid.uuid4().hex, body) == 401
        assert len(lookups) == h.rt.note_gate.per_second  # within one second of the (manual) clock
        assert await from_other_key(h, "x" * 200, body) == 401  # no job has such an id: nothing looked up
        h.clock.advance(1.0)
        for _ in range(100):
            assert await from_other_key(h, "fh_" + uuid.uuid4().hex, body) == 401
        assert len(lookups) == 2 * h.rt.note_gate.per_second


async def test_a_wrong_signature_with_the_right_token_is_no_key_mismatch(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = ready_body(await provider_id(h, job_id))
        url, _ = callback_url(PUBLIC, MASTER, "bfl", job_id)
        response = await h.client.post(url.removeprefix(PUBLIC), content=body,
                                       headers={"x-bfl-signature": "sha256=" + "0" * 64})
        assert response.status_code == 401
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.note is None


def test_the_gate_remembers_a_bounded_number_of_jobs() -> None:
    now = [0.0]
    gate = NoteGate(lambda: now[0], per_second=1000, remember=3)
    assert [gate.admit(j) for j in ("a", "b", "a", "c", "d")] == [True, True, False, True, True]
    assert gate.admit("b")  # forgotten: the least recently seen ("a" was seen again after it)
    assert not gate.admit("d") and not gate.admit("c")

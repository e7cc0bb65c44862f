"""Regression tests for the security review: malformed encodings, caps on what a callback may store,
id-less callbacks, secrets in stored and shown text, and the bound on a job's life."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from submitter.bodies import BodyError, loads_object
from submitter.status import Status
from tests.harness import Harness, harness
from tests.test_app import a_job, post, ready_body

pytestmark = pytest.mark.anyio


async def provider_id(h: Harness, job_id: str) -> str:
    job = await h.rt.store.get_job(job_id)
    assert job is not None and job.provider_job_id
    return job.provider_job_id


# -- 3. UTF-8 only -------------------------------------------------------------------------------

def _encodings(pid: str) -> dict[str, bytes]:
    escaped = '{"id": "%s", "status": "Pending", "x": "\\ud800"}' % pid
    raw = '{"id": "%s", "status": "Pending", "x": "\ud800"}' % pid
    return {
        "utf-16-escaped": escaped.encode("utf-16"),
        "utf-16le-escaped": escaped.encode("utf-16-le"),
        "utf-32-escaped": escaped.encode("utf-32"),
        "utf-16-raw-surrogate": raw.encode("utf-16-le", "surrogatepass"),
        "utf-32-raw-surrogate": raw.encode("utf-32-le", "surrogatepass"),
        "utf-8-encoded-surrogate": raw.encode("utf-8", "surrogatepass"),
        "utf-16-clean": ('{"id": "%s", "status": "Pending"}' % pid).encode("utf-16"),
        "latin-1": ('{"id": "%s", "status": "Pending", "x": "\xe9"}' % pid).encode("latin-1"),
        "utf-8-bom": b"\xef\xbb\xbf" + ('{"id": "%s", "status": "Pending"}' % pid).encode(),
    }


@pytest.mark.parametrize("name", list(_encodings("p")), ids=str)
async def test_a_callback_that_is_not_utf8_is_400_and_stores_nothing(tmp_path: Path, name: str) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        body = _encodings(await provider_id(h, job_id))[name]
        response = await post(h, "bfl", job_id, body)
        assert response.status_code == 400, response.text
        assert "error" in response.json()
        assert await h.rt.store.count_events(job_id) == 0
        job = await h.rt.store.get_job(job_id)
        assert job is not None and job.status == Status.SUBMITTED


def test_loads_object_accepts_utf8_only() -> None:
    assert loads_object('{"x": "é ✓ 🦊"}'.encode()) == {"x": "é ✓ 🦊"}
    with pytest.raises(BodyError, match="UTF-8"):
        loads_object('{"x": 1}'.encode("utf-16"))
    with pytest.raises(BodyError):
        loads_object(b'{"x": "\\udc00"}')
    assert json.loads(b'{"x": "\\ud83e\\udd8a"}') == loads_object(b'{"x": "\\ud83e\\udd8a"}')  # a valid pair

"""Large inputs out of the job's row (receiver/store/inputs.py), on every backend: stored once by sha256,
shown as a reference, put back exactly for the submit request, written in the job's own transaction."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from receiver.store import Job, Store
from receiver.store.inputs import INLINE_LIMIT, has_large, has_references, media_type, split_params
from submitter.simulator import png_image
from submitter.status import Status
from tests import ledger
from tests.receiver.store.test_store import BACKENDS

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0
#: A real PNG padded past the inline limit, as `--param input_image=@photo.png` sends it to BFL (raw base64).
PNG = png_image("inputs") + b"\0" * 40_000
PNG_B64 = base64.b64encode(PNG).decode()
JPEG_URI = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0" + b"\1" * 30_000).decode()


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path) as backend:
        yield backend


def job(job_id: str, params: dict[str, Any]) -> Job:
    return Job(id=job_id, provider="bfl", model="flux-kontext-pro", params=params, status=Status.QUEUED,
               created_at=NOW, deadline_at=NOW + 1800, next_check_at=NOW)


def params_with_images() -> dict[str, Any]:
    return {"prompt": "make it snow " + "p" * 20_000, "input_image": PNG_B64, "seed": 3,
            "refs": [{"image": JPEG_URI, "weight": 0.5}, "short"], "looks_like": {"sha256": "x", "size": 1, "type": "t"},
            "unicode": "ü" * (INLINE_LIMIT // 2 + 1)}


def reference(value: str, kind: str) -> dict[str, Any]:
    raw = value.encode()
    return {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "type": kind}


async def test_large_inputs_are_stored_once_and_shown_as_references(store: Store) -> None:
    given = params_with_images()
    await store.create_job(job("a", given))
    await store.create_job(job("b", {"input_image": PNG_B64, "prompt": "again"}))
    got = await store.get_job("a")
    assert got is not None
    assert got.params == {
        **given, "input_image": reference(PNG_B64, "image/png"),
        "refs": [{"image": reference(JPEG_URI, "image/jpeg"), "weight": 0.5}, "short"],
        "unicode": reference(given["unicode"], "text/plain"),
    }
    assert list(got.params) == list(given)  # the keys keep their order
    assert len(json.dumps(got.params)) < 22_000  # the prompt stays; the images are out of the row
    # The submit request's params: exactly as given, order included; the look-alike left alone.
    full = await store.job_params("a")
    assert full == given and json.dumps(full) == json.dumps(given)
    assert await store.job_params("b") == {"input_image": PNG_B64, "prompt": "again"}
    assert await store.job_params("nope") is None
    # One copy of the PNG for both jobs.
    stored = await ledger.rows(store, "SELECT sha256, size, type FROM inputs ORDER BY type")
    assert [tuple(r) for r in stored] == [tuple(reference(v, k).values()) for v, k in (
        (JPEG_URI, "image/jpeg"), (PNG_B64, "image/png"), (given["unicode"], "text/plain"))]
    uses = await ledger.rows(store, "SELECT job_id, path FROM job_inputs ORDER BY job_id, path")
    assert [tuple(r) for r in uses] == [("a", '["input_image"]'), ("a", '["refs",0,"image"]'), ("a", '["unicode"]'),
                                        ("b", '["input_image"]')]


async def test_small_params_stay_in_the_row(store: Store) -> None:
    given = {"prompt": "p", "image": "https://example.com/a.png", "edge": "e" * INLINE_LIMIT}
    await store.create_job(job("a", given))
    got = await store.get_job("a")
    assert got is not None and got.params == given and await store.job_params("a") == given
    assert await ledger.rows(store, "SELECT sha256 FROM inputs") == []


async def test_a_job_and_its_inputs_are_one_transaction(store: Store) -> None:
    await store.create_job(job("a", {"prompt": "p"}))
    with pytest.raises(Exception):  # noqa: B017 - backend-specific integrity error: the id is taken
        await store.create_job(job("a", {"input_image": PNG_B64}))
    assert await ledger.rows(store, "SELECT sha256 FROM inputs") == []
    assert await ledger.rows(store, "SELECT job_id FROM job_inputs") == []


async def test_idempotent_create_keeps_inputs_with_the_job(store: Store) -> None:
    given = {"prompt": "p", "input_image": PNG_B64}
    first, created = await store.create_job_once(job("a", given), key="k", fingerprint="f", now=NOW, ttl=60)
    again, repeated = await store.create_job_once(job("b", given), key="k", fingerprint="f", now=NOW, ttl=60)
    assert created and not repeated and first.id == again.id == "a"
    assert first.params["input_image"] == reference(PNG_B64, "image/png")
    assert await store.job_params("a") == given
    assert await store.get_job("b") is None
    assert len(await ledger.rows(store, "SELECT job_id FROM job_inputs")) == 1


def test_what_counts_as_large_and_its_type() -> None:
    small = {"prompt": "x" * 100_000, "a": "y" * INLINE_LIMIT, "b": ["z" * 100], "c": {"d": 1}}
    assert not has_large(small) and split_params(small) == (small, [])
    assert has_large({"a": ["y" * (INLINE_LIMIT + 1)]}) and has_large({"a": {"b": "é" * (INLINE_LIMIT // 2 + 1)}})
    assert has_large({"nested": {"prompt": "x" * (INLINE_LIMIT + 1)}})  # only the top-level prompt stays
    assert media_type(PNG_B64) == "image/png" and media_type(JPEG_URI) == "image/jpeg"
    assert media_type("data:Image/WebP;base64,AAAA") == "image/webp"
    assert media_type("not base64 at all!") == "text/plain" and media_type("QUJD" * 10) == "text/plain"
    assert has_references({"x": [{"sha256": "s", "size": 1, "type": "t"}]}) and not has_references({"x": [1]})

"""Large inputs (an image edit's base64 image in `params`) through the whole receiver, on SQLite and
PostgreSQL: stored once for two jobs with the same image, the provider (the simulator) receiving exactly
the request body it would have received with the image inline, every view showing the image's size and
type instead of its bytes, and Idempotency-Key behaving as before."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.cli.ledger import job_view
from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.engine.jobs import callback_url
from receiver.engine.sweep import sweep_once
from submitter.simulator import png_image
from submitter.status import Status
from tests import ledger
from tests.harness import MASTER, PUBLIC, Harness, harness
from tests.receiver.store.test_store import BACKENDS

pytestmark = pytest.mark.anyio

KEY = "inputs-key-0123456789abcdef"
PNG = png_image("edit me") + b"\0" * 90_000  # about 120 KB of base64: under the API's 256 KiB body cap
IMAGE = base64.b64encode(PNG).decode()
PARAMS = {"prompt": "make it snow", "input_image": IMAGE, "seed": 42, "output_format": "png"}


class Tap(httpx.AsyncBaseTransport):
    """Forwards to the simulator, keeping every request the receiver sent it."""

    def __init__(self) -> None:
        self.inner: httpx.AsyncBaseTransport | None = None
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.sent.append(request)
        assert self.inner is not None
        return await self.inner.handle_async_request(request)


@contextlib.asynccontextmanager
async def tapped(tmp_path: Path, kind: str) -> AsyncIterator[tuple[Harness, Tap]]:
    tap = Tap()
    integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(KEY))
    async with BACKENDS[kind](tmp_path) as store, harness(
        tmp_path, store=store, api_transport=tap, integrations=integrations
    ) as h:
        tap.inner = httpx.ASGITransport(h.sim.app)
        h.client.headers.update({"authorization": f"Bearer {KEY}"})
        yield h, tap


@pytest.fixture(params=sorted(BACKENDS))
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Harness, Tap]]:
    async with tapped(tmp_path, request.param) as pair:
        yield pair


async def until_stored(h: Harness, job_id: str) -> None:
    for _ in range(6):
        await sweep_once(h.rt)
        await h.settle()
        job = await h.rt.store.get_job(job_id)
        assert job is not None
        if job.status == Status.STORED:
            return
        h.clock.advance(h.settings.poll_after)
    raise AssertionError(f"{job_id} not stored")


def expected_body(h: Harness, job_id: str, params: dict[str, Any]) -> bytes:
    """The submit request as the receiver built it before large inputs left the row: from `params` inline."""
    dialect = h.settings.provider("bfl").dialect
    url, secret = callback_url(PUBLIC, MASTER, "bfl", job_id)
    body = dialect.submit_body(params, url, secret, ())
    return httpx.Request("POST", dialect.submit_url(h.settings.provider("bfl").base_url, "flux-kontext-pro"),
                         json=body).content


async def test_an_image_is_kept_once_and_sent_as_given(setup: tuple[Harness, Tap]) -> None:
    h, tap = setup
    body = {"provider": "bfl", "model": "flux-kontext-pro", "params": PARAMS}
    first = await h.client.post("/v1/jobs", json=body, headers={"idempotency-key": "edit-1"})
    second = await h.client.post("/v1/jobs", json=body)
    assert first.status_code == second.status_code == 201, first.text
    ids = [first.json()["id"], second.json()["id"]]
    # Idempotency as before: the same key and body name the same job, another body is a conflict.
    again = await h.client.post("/v1/jobs", json=body, headers={"idempotency-key": "edit-1"})
    assert again.status_code == 200 and again.json()["id"] == ids[0]
    changed = {**body, "params": {**PARAMS, "input_image": IMAGE[:40] + ("B" if IMAGE[40] != "B" else "C") + IMAGE[41:]}}
    assert (await h.client.post("/v1/jobs", json=changed, headers={"idempotency-key": "edit-1"})).status_code == 409
    for job_id in ids:
        await until_stored(h, job_id)
    # The provider received, for each job, exactly the bytes it would have with the image inline.
    submits = [r for r in tap.sent if r.method == "POST" and r.url.path.endswith("/flux-kontext-pro")]
    assert len(submits) == 2
    # One sweep may submit both, in either order: each request names its job in its webhook URL.
    by_job = {json.loads(r.content)["webhook_url"].split("/")[-2]: r.content for r in submits}
    assert sorted(by_job) == sorted(ids)
    for job_id, content in by_job.items():
        assert content == expected_body(h, job_id, PARAMS)
        assert json.loads(content)["input_image"] == IMAGE
    # Stored once, used by both jobs; the rows hold a reference.
    reference = {"sha256": hashlib.sha256(IMAGE.encode()).hexdigest(), "size": len(IMAGE), "type": "image/png"}
    assert [tuple(r) for r in await ledger.rows(h.rt.store, "SELECT sha256, size, type FROM inputs")] == [
        tuple(reference.values())]
    assert len(await ledger.rows(h.rt.store, "SELECT job_id FROM job_inputs")) == 2
    job = await h.rt.store.get_job(ids[0])
    assert job is not None and job.params == {**PARAMS, "input_image": reference}
    # Views: size and type, never the bytes.
    assert (await job_view(h.rt, ids[0]))["params"]["input_image"] == reference  # `fluxhook status`
    for path in (f"/v1/jobs/{ids[0]}", "/v1/jobs", f"/ui/jobs/{ids[0]}", "/ui/jobs", "/ui"):
        page = await h.client.get(path)
        assert page.status_code == 200 and IMAGE[:100] not in page.text, path
    page = (await h.client.get(f"/ui/jobs/{ids[0]}")).text
    assert f"Input input_image</dt><dd class=\"input\">image/png, {len(IMAGE)} bytes, sha256 <code>" \
           f"{reference['sha256']}</code>" in page

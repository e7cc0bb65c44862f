"""The fake provider: both API shapes, signed delivery URLs, real images, callbacks, faults."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from submitter.signing import VerificationError, verify_bfl
from submitter.simulator import Faults, Simulator, jpeg_image, png_image

pytestmark = pytest.mark.anyio

HOOK = "http://receiver/hook"
SECRET = "per-job-secret"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Receiver:
    """Records callbacks; answers with queued statuses (or raises queued errors), then 200."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[int | Exception] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def sim(receiver: Receiver, clock: FakeClock) -> AsyncIterator[Simulator]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle))
    simulator = Simulator(http=http, callback_retries=(0.0, 0.0), default_faults=Faults(runtime=0.0), clock=clock)
    yield simulator
    await simulator.aclose()
    await http.aclose()


@pytest.fixture
async def api(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(sim.app), base_url="http://sim") as client:
        yield client


async def submit(api: httpx.AsyncClient, prompt: str = "a cat", **extra: str) -> dict:
    response = await api.post("/v1/flux-dev", json={"prompt": prompt, **extra}, headers={"x-key": "k"})
    assert response.status_code == 200, response.text
    return response.json()


async def poll(api: httpx.AsyncClient, task_id: str) -> dict:
    response = await api.get("/v1/get_result", params={"id": task_id}, headers={"x-key": "k"})
    assert response.status_code == 200
    return response.json()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse a PNG strictly (signature, CRCs, IHDR first, IEND last)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    return chunks


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """Walk a JPEG's marker segments from SOI to SOS; check it ends with EOI."""
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    segments, pos = [], 2
    while data[pos + 1] != 0xDA:
        assert data[pos] == 0xFF
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segments.append((data[pos + 1], data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return segments


async def test_native_submit_then_poll_until_ready(sim: Simulator, api: httpx.AsyncClient, clock: FakeClock) -> None:
    sim.add_rule("slow", Faults(runtime=10.0))
    answer = await submit(api, "a slow cat")
    task_id = answer["id"]
    assert answer == {
        "id": task_id,
        "polling_url": f"http://sim/v1/get_result?id={task_id}",
        "cost": 1.0,
        "input_mp": 0.0,
        "output_mp": 1.0,
    }
    pending = (await api.get(answer["polling_url"], headers={"x-key": "k"})).json()
    assert pending == {
        "id": task_id,
        "status": "Pending",
        "result": None,
        "progress": 0,
        "details": None,
        "preview": None,
    }
    clock.advance(5.0)
    assert (await poll(api, task_id))["progress"] == 50
    clock.advance(5.0)
    ready = await poll(api, task_id)
    assert ready["status"] == "Ready" and ready["progress"] is None and ready["details"] is None
    result = ready["result"]
    assert result["seed"] == 42 and result["prompt"] == "a slow cat" and result["duration"] == 10.0
    assert result["end_time"] - result["start_time"] == 10.0
    expiry = "2027-01-15T08%3A10%3A10Z"  # the clock's now + 600 s, URL-encoded
    assert result["sample"].startswith(f"http://sim/delivery/{task_id}/sample.png?se={expiry}&sp=r&sig=")
    image = await api.get(result["sample"])  # no credentials
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    png_chunks(image.content)
    task = sim.stats()["tasks"][task_id]
    assert task == {
        "model": "flux-dev",
        "prompt": "a slow cat",
        "submits": 1,
        "polls": 3,
        "callbacks_sent": 0,
        "deliveries": 1,
        "status": "Ready",
    }


async def test_webhook_shape_answer_has_no_polling_url(sim: Simulator, api: httpx.AsyncClient) -> None:
    sim.add_rule("hooked", Faults(webhook_shape=True))
    answer = await submit(api, "hooked", webhook_url=HOOK)
    assert answer == {"id": answer["id"], "status": "Pending", "webhook_url": HOOK}


async def test_proxy_shape_and_auth(api: httpx.AsyncClient) -> None:
    bearer = {"authorization": "Bearer k"}
    answer = (await api.post("/flux/v1/flux-pro-1.1", json={"prompt": "p"}, headers=bearer)).json()
    assert answer["polling_url"] == f"https://api.eu2.bfl.ai/v1/get_result?id={answer['id']}"
    result = await api.get("/flux/v1/get_result", params={"id": answer["id"]}, headers=bearer)
    assert result.json()["status"] == "Ready"
    for response in (
        await api.post("/flux/v1/flux-dev", json={"prompt": "p"}),
        await api.post("/flux/v1/flux-dev", json={"prompt": "p"}, headers={"x-key": "k"}),
        await api.get("/flux/v1/get_result", params={"id": answer["id"]}),
    ):
        assert response.status_code == 401 and response.json()["error"]["type"] == "auth"
    for response in (
        await api.post("/v1/flux-dev", json={"prompt": "p"}, headers=bearer),
        await api.get("/v1/get_result", params={"id": answer["id"]}),
    ):
        assert response.status_code == 401 and "detail" in response.json()


async def test_unknown_task_and_invalid_body(api: httpx.AsyncClient) -> None:
    assert await poll(api, "nope") == {"id": "nope", "status": "Task not found"}
    response = await api.post("/v1/flux-dev", content=b"not json", headers={"x-key": "k"})
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("outcome", "status", "details"),
    [
        ("error", "Error", {"error": "simulated failure"}),
        ("request_moderated", "Request Moderated", {"Moderation Reasons": ["Simulated"]}),
        ("content_moderated", "Content Moderated", {"Moderation Reasons": ["Simulated"]}),
    ],
)
async def test_failure_outcomes(
    sim: Simulator, api: httpx.AsyncClient, outcome: str, status: str, details: dict
) -> None:
    sim.add_rule("", Faults(runtime=0.0, outcome=outcome))
    body = await poll(api, (await submit(api))["id"])
    assert body["status"] == status and body["result"] is None and body["details"] == details


def test_images_are_valid_and_differ_per_task() -> None:
    chunks = dict(png_chunks(png_image("task-1")))
    assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (16, 16, 8, 2, 0, 0, 0)
    assert len(zlib.decompress(chunks[b"IDAT"])) == 16 * (1 + 16 * 3)
    assert b"task-1" in chunks[b"tEXt"]
    assert png_image("task-1") != png_image("task-2")
    padded = png_image("task-1", 100_000)
    assert len(padded) >= 100_000 and len(png_chunks(padded)) == 5

    segments = jpeg_segments(jpeg_image("task-1"))
    assert segments[0][0] == 0xE0 and (0xFE, b"fluxhook simulator task task-1") in segments
    assert jpeg_image("task-1") != jpeg_image("task-2")
    padded = jpeg_image("task-1", 200_000)
    assert len(padded) >= 200_000 and len(jpeg_segments(padded)) > len(segments)


async def test_jpeg_delivery(sim: Simulator, api: httpx.AsyncClient) -> None:
    sim.add_rule("jpeg", Faults(runtime=0.0, image_format="jpeg"))
    task_id = (await submit(api, "jpeg please"))["id"]
    sample = (await poll(api, task_id))["result"]["sample"]
    assert urlsplit(sample).path == f"/delivery/{task_id}/sample.jpeg"
    image = await api.get(sample)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert (0xFE, f"fluxhook simulator task {task_id}".encode()) in jpeg_segments(image.content)


async def test_expired_first_url_then_fresh_one(sim: Simulator, api: httpx.AsyncClient) -> None:
    sim.add_rule("expire", Faults(runtime=0.0, expired_url=True))
    task_id = (await submit(api, "expire me"))["id"]
    refused = await api.get((await poll(api, task_id))["result"]["sample"])
    assert refused.status_code == 403 and b"AuthenticationFailed" in refused.content
    fresh = await api.get((await poll(api, task_id))["result"]["sample"])
    assert fresh.status_code == 200
    totals = sim.stats()["totals"]
    assert totals["deliveries"] == 1 and totals["deliveries_refused"] == 1


async def test_url_expires_after_its_lifetime(api: httpx.AsyncClient, clock: FakeClock) -> None:
    sample = (await poll(api, (await submit(api))["id"]))["result"]["sample"]
    clock.advance(599.0)
    assert (await api.get(sample)).status_code == 200
    clock.advance(2.0)
    assert (await api.get(sample)).status_code == 403


async def test_tampered_urls_are_refused(api: httpx.AsyncClient) -> None:
    sample = (await poll(api, (await submit(api))["id"]))["result"]["sample"]
    later = sample.replace("se=2027", "se=2028")
    for url in (sample[:-1] + ("0" if sample[-1] != "0" else "1"), later, sample.split("&sig=")[0]):
        response = await api.get(url)
        assert response.status_code == 403 and b"AuthenticationFailed" in response.content


async def test_slow_download_streams_the_whole_image(sim: Simulator, api: httpx.AsyncClient) -> None:
    sim.add_rule("slow", Faults(runtime=0.0, slow_download=40_000.0, image_size=3_000))
    task_id = (await submit(api, "slow download"))["id"]
    image = await api.get((await poll(api, task_id))["result"]["sample"])
    assert image.status_code == 200 and image.headers["content-length"] == str(len(image.content))
    assert image.content == png_image(task_id, 3_000)


@pytest.mark.parametrize(("signature", "scheme"), [("hmac", "hmac-sha256"), ("echo", "secret-header")])
async def test_signed_callbacks(
    sim: Simulator, api: httpx.AsyncClient, receiver: Receiver, signature: str, scheme: str
) -> None:
    sim.add_rule("good", Faults(runtime=0.0, signature=signature))
    sim.add_rule("bad", Faults(runtime=0.0, signature=signature, bad_signature=True))
    good = await submit(api, "good", webhook_url=HOOK, webhook_secret=SECRET)
    await submit(api, "bad", webhook_url=HOOK, webhook_secret=SECRET)
    await sim.drain()
    ok, forged = receiver.requests
    assert str(ok.url) == HOOK and ok.headers["content-type"] == "application/json"
    assert verify_bfl(ok.content, ok.headers, SECRET) == scheme
    with pytest.raises(VerificationError):
        verify_bfl(forged.content, forged.headers, SECRET)
    body = json.loads(ok.content)
    assert body["id"] == good["id"] and body["status"] == "Ready"
    assert (await api.get(body["result"]["sample"])).status_code == 200


async def test_unsigned_callbacks(sim: Simulator, api: httpx.AsyncClient, receiver: Receiver) -> None:
    sim.add_rule("none", Faults(runtime=0.0, signature="none"))
    await submit(api, "none", webhook_url=HOOK, webhook_secret=SECRET)
    await submit(api, "hmac but no secret", webhook_url=HOOK)
    await sim.drain()
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        assert "x-bfl-signature" not in request.headers and "x-webhook-secret" not in request.headers
        assert verify_bfl(request.content, request.headers, SECRET) == "token"


async def test_callback_faults(sim: Simulator, api: httpx.AsyncClient, receiver: Receiver) -> None:
    sim.add_rule("dup", Faults(runtime=0.0, duplicate=3))
    sim.add_rule("reorder", Faults(runtime=0.0, reorder=True))
    sim.add_rule("progress", Faults(runtime=0.0, progress=True))
    sim.add_rule("drop", Faults(runtime=0.0, drop=True))
    ids = {}
    for prompt in ("dup", "reorder", "progress", "drop"):
        ids[prompt] = (await submit(api, prompt, webhook_url=HOOK, webhook_secret=SECRET))["id"]
    await sim.drain()
    by_task: dict[str, list[dict]] = {}
    for body in receiver.bodies():
        by_task.setdefault(body.get("id") or body["task_id"], []).append(body)
    assert [b["status"] for b in by_task[ids["dup"]]] == ["Ready"] * 3
    assert len({json.dumps(b) for b in by_task[ids["dup"]]}) == 1
    assert [b["status"] for b in by_task[ids["reorder"]]] == ["Ready", "Pending"]
    assert by_task[ids["reorder"]][1] == {"task_id": ids["reorder"], "status": "Pending", "progress": 10}
    assert by_task[ids["progress"]][0] == {"task_id": ids["progress"], "status": "processing", "progress": 50}
    assert by_task[ids["progress"]][1]["status"] == "Ready"
    assert ids["drop"] not in by_task
    stats = sim.stats()
    assert [stats["tasks"][ids[p]]["callbacks_sent"] for p in ("dup", "reorder", "progress", "drop")] == [3, 2, 2, 0]
    assert stats["totals"]["callbacks_sent"] == 7


async def test_callback_retries_then_gives_up(sim: Simulator, api: httpx.AsyncClient, receiver: Receiver) -> None:
    receiver.answers = [500, httpx.ConnectError("refused")]
    await submit(api, "retried", webhook_url=HOOK)
    await sim.drain()
    assert len(receiver.requests) == 3 and sim.stats()["totals"]["callbacks_failed"] == 0
    receiver.answers = [503, 503, 503, 503]
    await submit(api, "abandoned", webhook_url=HOOK)
    await sim.drain()
    assert len(receiver.requests) == 6 and sim.stats()["totals"]["callbacks_failed"] == 1


async def test_aclose_cancels_pending_callbacks(sim: Simulator, api: httpx.AsyncClient, receiver: Receiver) -> None:
    sim.add_rule("late", Faults(runtime=0.0, delay=60.0))
    await submit(api, "late", webhook_url=HOOK)
    await sim.aclose()
    await sim.drain()
    assert receiver.requests == []


async def test_submit_errors_then_accept(sim: Simulator, api: httpx.AsyncClient) -> None:
    sim.add_rule("busy", Faults(runtime=0.0, submit_errors=(429, 503)))
    first = await api.post("/v1/flux-dev", json={"prompt": "busy"}, headers={"x-key": "k"})
    assert first.status_code == 429 and first.headers["retry-after"] == "0"
    assert first.json() == {"detail": "simulated"}
    assert (await api.post("/v1/flux-dev", json={"prompt": "busy"}, headers={"x-key": "k"})).status_code == 503
    await submit(api, "not affected")
    task_id = (await submit(api, "busy"))["id"]
    await submit(api, "busy again")  # the rule's errors are used up
    stats = sim.stats()
    assert stats["tasks"][task_id]["submits"] == 3
    assert stats["totals"]["submit_requests"] == 5 and stats["totals"]["submits_rejected"] == 2
    assert stats["totals"]["tasks"] == 3


async def test_control_api(sim: Simulator, api: httpx.AsyncClient) -> None:
    rule = {"prompt_contains": "ctl", "outcome": "error", "submit_errors": [429], "runtime": 0}
    assert (await api.post("/_sim/rules", json=rule)).status_code == 200
    assert (await api.post("/v1/flux-dev", json={"prompt": "ctl"}, headers={"x-key": "k"})).status_code == 429
    task_id = (await submit(api, "ctl"))["id"]
    assert (await poll(api, task_id))["status"] == "Error"
    for bad in ({"outcome": "error"}, {"prompt_contains": "x", "bogus": 1}, {"prompt_contains": "x", "drop": 1}):
        assert (await api.post("/_sim/rules", json=bad)).status_code == 422
    stats = (await api.get("/_sim/stats")).json()
    assert stats == sim.stats()
    assert stats["totals"]["submit_requests"] == 2 and stats["totals"]["polls"] == 1


def test_faults_validation() -> None:
    for bad in ({"outcome": "maybe"}, {"signature": "rsa"}, {"duplicate": 0}, {"submit_errors": (200,)}):
        with pytest.raises(ValueError):
            Faults(**bad)
    assert Faults.from_json({"submit_errors": [429], "delay": 1}) == Faults(submit_errors=(429,), delay=1.0)

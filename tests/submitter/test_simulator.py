"""The fake provider: BFL, Replicate and proxy shapes, signed delivery URLs, real images, callbacks, faults."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from submitter.signing import VerificationError, sign_standard, verify_bfl, verify_standard
from submitter.simulator import Faults, Simulator, jpeg_image, png_image
from submitter.simulator.prediction import EVENTS

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
        "kind": "bfl",
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
        ("aborted", "Error", {"error": "simulated failure"}),  # Replicate-only outcomes on a BFL task
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
    bad_faults: list[dict[str, Any]] = [
        {"outcome": "maybe"},
        {"signature": "rsa"},
        {"duplicate": 0},
        {"outputs": 0},
        {"submit_errors": (200,)},
    ]
    for bad in bad_faults:
        with pytest.raises(ValueError):
            Faults(**bad)
    assert Faults.from_json({"submit_errors": [429], "delay": 1}) == Faults(submit_errors=(429,), delay=1.0)
    replicate = {"outputs": 4, "output_list": True, "drop_completed": True, "outcome": "aborted"}
    assert Faults.from_json(replicate) == Faults(outputs=4, output_list=True, drop_completed=True, outcome="aborted")
    with pytest.raises(ValueError):
        Faults.from_json({"outputs": "4"})


# -- Replicate (native and through the DeerAPI/CometAPI proxies) ------------------------

BEARER = {"authorization": "Bearer r8_test"}
MODEL = "/v1/models/black-forest-labs/flux-1.1-pro/predictions"
NOW_ISO = "2027-01-15T08:00:00.000000Z"  # the FakeClock's start


async def create(
    api: httpx.AsyncClient, prompt: str = "a cat", *, proxy: bool = False, seed: int | None = None, **extra: Any
) -> dict:
    model_input: dict[str, Any] = {"prompt": prompt} | ({} if seed is None else {"seed": seed})
    path = ("/replicate" if proxy else "") + MODEL
    response = await api.post(path, json={"input": model_input, **extra}, headers=BEARER)
    assert response.status_code == 201, response.text
    return response.json()


async def get_prediction(api: httpx.AsyncClient, prediction_id: str, *, proxy: bool = False) -> dict:
    response = await api.get(f"{'/replicate' if proxy else ''}/v1/predictions/{prediction_id}", headers=BEARER)
    assert response.status_code == 200, response.text
    return response.json()


async def cancel(api: httpx.AsyncClient, prediction_id: str) -> dict:
    response = await api.post(f"/v1/predictions/{prediction_id}/cancel", headers=BEARER)
    assert response.status_code == 200, response.text
    return response.json()


def by_prediction(receiver: Receiver) -> dict[str, list[tuple[str, str | None]]]:
    """(status, webhook-id) of each webhook, per prediction, in arrival order."""
    result: dict[str, list[tuple[str, str | None]]] = {}
    for request in receiver.requests:
        body = json.loads(request.content)
        result.setdefault(body["id"], []).append((body["status"], request.headers.get("webhook-id")))
    return result


async def test_replicate_create_native_and_proxy(sim: Simulator, api: httpx.AsyncClient) -> None:
    for proxy in (False, True):
        prediction = await create(api, "a red fox", proxy=proxy)
        pid = prediction["id"]
        assert len(pid) == 26 and pid.isalnum() and pid == pid.lower()
        assert prediction == {
            "id": pid,
            "model": "black-forest-labs/flux-1.1-pro",
            "version": "hidden",
            "input": {"prompt": "a red fox"},
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": NOW_ISO,
            "started_at": None,
            "completed_at": None,
            "urls": {  # always Replicate's own URLs, even from a proxy
                "get": f"https://api.replicate.com/v1/predictions/{pid}",
                "cancel": f"https://api.replicate.com/v1/predictions/{pid}/cancel",
                "stream": prediction["urls"]["stream"],
                "web": f"https://replicate.com/p/{pid}",
            },
            "metrics": {},
            "source": "api",
        }
        assert prediction["urls"]["stream"].startswith("https://stream.replicate.com/v1/files/")
        assert (await get_prediction(api, pid, proxy=proxy))["status"] == "succeeded"  # runtime 0
    hooked = await create(api, webhook=HOOK, webhook_events_filter=["completed"])
    assert hooked["webhook"] == HOOK and hooked["webhook_events_filter"] == ["completed"]
    stats = sim.stats()
    assert stats["totals"]["tasks"] == 3 and {t["kind"] for t in stats["tasks"].values()} == {"replicate"}


async def test_replicate_auth_validation_and_unknown_ids(api: httpx.AsyncClient) -> None:
    native = (await create(api))["id"]
    proxied = (await create(api, proxy=True))["id"]
    bfl = (await submit(api))["id"]
    for prefix in ("", "/replicate"):
        for headers in ({}, {"x-key": "k"}, {"authorization": "Bearer "}, {"authorization": "Basic k"}):
            for response in (
                await api.post(prefix + MODEL, json={"input": {"prompt": "p"}}, headers=headers),
                await api.get(f"{prefix}/v1/predictions/{native}", headers=headers),
                await api.post(f"{prefix}/v1/predictions/{native}/cancel", headers=headers),
            ):
                assert response.status_code == 401 and response.json()["detail"] == "Unauthenticated"
        for body in (
            {},
            {"input": "a cat"},
            {"input": None},
            {"input": {}, "webhook": 5},
            {"input": {}, "webhook_events_filter": ["finished"]},
            {"input": {}, "webhook_events_filter": "completed"},
        ):
            response = await api.post(prefix + MODEL, json=body, headers=BEARER)
            assert response.status_code == 422 and response.json()["status"] == 422
        assert (await api.post(prefix + MODEL, content=b"not json", headers=BEARER)).status_code == 422
    assert (await api.get("/v1/webhooks/default/secret")).status_code == 401
    for response in (
        await api.get("/v1/predictions/nope", headers=BEARER),
        await api.post("/v1/predictions/nope/cancel", headers=BEARER),
        await api.get(f"/v1/predictions/{proxied}", headers=BEARER),  # a proxy's predictions stay there
        await api.get(f"/replicate/v1/predictions/{native}", headers=BEARER),
        await api.get(f"/v1/predictions/{bfl}", headers=BEARER),
    ):
        assert response.status_code == 404 and response.json()["detail"] == "Not found."


async def test_replicate_lifecycle_follows_the_clock(sim: Simulator, api: httpx.AsyncClient, clock: FakeClock) -> None:
    sim.add_rule("slow", Faults(runtime=30.0))
    pid = (await create(api, "a slow cat", seed=7))["id"]
    starting = await get_prediction(api, pid)
    assert (starting["status"], starting["logs"], starting["started_at"]) == ("starting", "", None)
    clock.advance(10.0)
    processing = await get_prediction(api, pid)
    assert processing["status"] == "processing" and processing["logs"] == "Using seed: 7\n"
    assert processing["started_at"] == "2027-01-15T08:00:10.000000Z" and processing["output"] is None
    clock.advance(10.0)
    later = await get_prediction(api, pid)
    assert later["status"] == "processing" and later["output"] is None  # a string output comes at the end
    assert later["logs"].startswith(processing["logs"]) and "step 2/4\n" in later["logs"]
    clock.advance(10.0)
    done = await get_prediction(api, pid)
    assert done["status"] == "succeeded" and done["completed_at"] == "2027-01-15T08:00:30.000000Z"
    assert done["logs"].startswith(later["logs"]) and done["error"] is None and done["data_removed"] is False
    assert done["metrics"] == {"predict_time": 20.0, "total_time": 30.0, "image_count": 1}
    output = done["output"]
    assert isinstance(output, str) and urlsplit(output).path == f"/delivery/{pid}/out-0.png"
    assert "se=2027-01-15T09%3A00%3A30Z" in output  # now + replicate_url_lifetime (3600 s)
    image = await api.get(output)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    png_chunks(image.content)
    stats = sim.stats()
    assert stats["tasks"][pid] == {
        "kind": "replicate",
        "model": "black-forest-labs/flux-1.1-pro",
        "prompt": "a slow cat",
        "submits": 1,
        "polls": 4,
        "callbacks_sent": 0,
        "deliveries": 1,
        "status": "succeeded",
        "events_sent": {"start": 0, "output": 0, "logs": 0, "completed": 0},
        "cancels": 0,
    }
    assert stats["totals"]["polls"] == 4 and stats["totals"]["deliveries"] == 1


async def test_replicate_list_outputs(sim: Simulator, api: httpx.AsyncClient, clock: FakeClock) -> None:
    sim.add_rule("four", Faults(runtime=0.0, outputs=4))
    sim.add_rule("one", Faults(runtime=0.0, output_list=True, image_format="jpeg"))
    sim.add_rule("partial", Faults(runtime=30.0, outputs=4))
    four = await get_prediction(api, (await create(api, "four"))["id"])
    assert four["status"] == "succeeded" and four["metrics"]["image_count"] == 4
    assert [urlsplit(url).path.rsplit("/", 1)[1] for url in four["output"]] == [f"out-{i}.png" for i in range(4)]
    images = [await api.get(url) for url in four["output"]]
    assert all(image.status_code == 200 for image in images)
    for image in images:
        png_chunks(image.content)
    assert len({image.content for image in images}) == 4

    one = await get_prediction(api, (await create(api, "one"))["id"])
    assert isinstance(one["output"], list) and len(one["output"]) == 1
    image = await api.get(one["output"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"

    pid = (await create(api, "partial"))["id"]
    clock.advance(20.0)
    partial = await get_prediction(api, pid)
    assert partial["status"] == "processing" and len(partial["output"]) == 2  # output before success
    assert [(await api.get(url)).status_code for url in partial["output"]] == [200, 200]
    clock.advance(10.0)
    assert len((await get_prediction(api, pid))["output"]) == 4


async def test_replicate_secret_endpoint(sim: Simulator, api: httpx.AsyncClient) -> None:
    key = (await api.get("/v1/webhooks/default/secret", headers=BEARER)).json()["key"]
    assert key == sim.replicate_secret and key.startswith("whsec_")
    assert len(base64.b64decode(key.removeprefix("whsec_"), validate=True)) == 32
    assert sim.proxy_secret.startswith("whsec_") and sim.proxy_secret != key
    sim.replicate_secret = "whsec_" + base64.b64encode(b"r" * 32).decode()  # rotation
    assert (await api.get("/v1/webhooks/default/secret", headers=BEARER)).json()["key"] == sim.replicate_secret
    assert (await api.get("/replicate/v1/webhooks/default/secret", headers=BEARER)).status_code == 404
    given = Simulator(replicate_secret="whsec_bmF0aXZl", proxy_secret="whsec_cHJveHk=")
    assert (given.replicate_secret, given.proxy_secret) == ("whsec_bmF0aXZl", "whsec_cHJveHk=")


async def test_replicate_webhooks_in_order_and_signed(
    sim: Simulator, api: httpx.AsyncClient, receiver: Receiver, clock: FakeClock
) -> None:
    sim.add_rule("pair", Faults(runtime=0.0, outputs=2))
    pid = (await create(api, "pair", webhook=HOOK, webhook_events_filter=list(EVENTS)))["id"]
    await sim.drain()
    bodies = receiver.bodies()
    shapes = [(b["status"], b["logs"].count("\n"), len(b["output"] or [])) for b in bodies]
    assert shapes == [("starting", 0, 0), ("processing", 1, 0), ("processing", 3, 1), ("succeeded", 6, 2)]
    ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert len(set(ids)) == 4 and all(i.startswith("msg_") for i in ids)
    for request in receiver.requests:
        assert str(request.url) == HOOK and request.headers["content-type"] == "application/json"
        msg_id, stamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
        assert stamp == str(int(clock.now))
        assert request.headers["webhook-signature"] == sign_standard(
            sim.replicate_secret, msg_id, int(stamp), request.content
        )
        assert verify_standard(request.content, request.headers, [sim.replicate_secret], now=clock.now) == msg_id
    assert bodies[-1] == await get_prediction(api, pid)  # the completed webhook is the final snapshot
    assert bodies[-1]["webhook"] == HOOK and bodies[-1]["webhook_events_filter"] == list(EVENTS)
    task = sim.stats()["tasks"][pid]
    assert task["events_sent"] == {"start": 1, "output": 1, "logs": 1, "completed": 1} and task["callbacks_sent"] == 4


async def test_replicate_webhooks_verify_with_standardwebhooks(receiver: Receiver) -> None:
    import standardwebhooks
    http = httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle))
    sim = Simulator(http=http, default_faults=Faults(runtime=0.0))  # the real clock: the library checks it
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(sim.app), base_url="http://sim") as api:
            await create(api, webhook=HOOK, webhook_events_filter=["start", "completed"])
            await sim.drain()
            await create(api, proxy=True, webhook=HOOK)
            await sim.drain()
    finally:
        await sim.aclose()
        await http.aclose()
    start, completed, proxied = receiver.requests
    assert abs(int(start.headers["webhook-timestamp"]) - time.time()) < 60
    for request in (start, completed):
        body = standardwebhooks.Webhook(sim.replicate_secret).verify(request.content, dict(request.headers))
        assert body == json.loads(request.content)
    assert standardwebhooks.Webhook(sim.proxy_secret).verify(proxied.content, dict(proxied.headers))["id"]
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(sim.replicate_secret).verify(proxied.content, dict(proxied.headers))


@pytest.mark.parametrize(
    ("events", "outputs", "statuses", "sent"),
    [
        (None, 1, ["succeeded"], {"completed": 1}),  # default: output + completed; one-shot output comes with it
        (None, 2, ["processing", "succeeded"], {"output": 1, "completed": 1}),
        (["completed"], 2, ["succeeded"], {"completed": 1}),
        (["output"], 1, ["succeeded"], {"output": 1}),  # the output arrives with success
        (["start", "logs"], 1, ["starting", "processing"], {"start": 1, "logs": 1}),
        ([], 1, [], {}),
    ],
)
async def test_replicate_events_filter(
    sim: Simulator,
    api: httpx.AsyncClient,
    receiver: Receiver,
    events: list[str] | None,
    outputs: int,
    statuses: list[str],
    sent: dict[str, int],
) -> None:
    sim.add_rule("", Faults(runtime=0.0, outputs=outputs))
    extra = {} if events is None else {"webhook_events_filter": events}
    pid = (await create(api, webhook=HOOK, **extra))["id"]
    await sim.drain()
    assert [b["status"] for b in receiver.bodies()] == statuses
    assert sim.stats()["tasks"][pid]["events_sent"] == dict.fromkeys(EVENTS, 0) | sent


async def test_replicate_only_completed_is_retried_with_the_same_id(
    sim: Simulator, api: httpx.AsyncClient, receiver: Receiver
) -> None:
    receiver.answers = [500, 500, 500, httpx.ConnectError("refused")]
    pid = (await create(api, webhook=HOOK, webhook_events_filter=["start", "logs", "completed"]))["id"]
    await sim.drain()
    assert [b["status"] for b in receiver.bodies()] == ["starting", "processing"] + ["succeeded"] * 3
    ids = [request.headers["webhook-id"] for request in receiver.requests]
    assert len(set(ids[2:])) == 1 and len(set(ids)) == 3
    assert len({request.content for request in receiver.requests[2:]}) == 1
    stats = sim.stats()
    assert stats["tasks"][pid]["events_sent"] == {"start": 1, "output": 0, "logs": 1, "completed": 3}
    assert stats["totals"]["callbacks_failed"] == 0
    receiver.answers = [503, 503, 503]
    await create(api, webhook=HOOK, webhook_events_filter=["completed"])
    await sim.drain()
    assert len(receiver.requests) == 8 and sim.stats()["totals"]["callbacks_failed"] == 1


async def test_replicate_webhook_faults(sim: Simulator, api: httpx.AsyncClient, receiver: Receiver) -> None:
    sim.add_rule("dup", Faults(runtime=0.0, duplicate=3))
    sim.add_rule("reorder", Faults(runtime=0.0, reorder=True))
    sim.add_rule("shuffle", Faults(runtime=0.0, reorder=True))
    sim.add_rule("drop", Faults(runtime=0.0, drop=True))
    sim.add_rule("rescue", Faults(runtime=0.0, drop_completed=True))
    sim.add_rule("late", Faults(runtime=0.0, delay=0.01))
    everything = ["start", "logs", "completed"]
    ids = {}
    for prompt in ("dup", "reorder", "drop", "rescue", "late"):
        ids[prompt] = (await create(api, prompt, webhook=HOOK, webhook_events_filter=everything))["id"]
    ids["shuffle"] = (await create(api, "shuffle", webhook=HOOK))["id"]  # default filter: nothing to hold back
    await sim.drain()
    seen = by_prediction(receiver)
    assert [s for s, _ in seen[ids["dup"]]] == ["starting", "processing"] + ["succeeded"] * 3
    assert len({m for _, m in seen[ids["dup"]][2:]}) == 1
    dup_bodies = [r.content for r in receiver.requests if json.loads(r.content)["id"] == ids["dup"]]
    assert len(set(dup_bodies[2:])) == 1
    assert [s for s, _ in seen[ids["reorder"]]] == ["succeeded", "starting", "processing"]
    assert len({m for _, m in seen[ids["reorder"]]}) == 3
    assert [s for s, _ in seen[ids["shuffle"]]] == ["succeeded", "processing"]
    assert ids["drop"] not in seen
    assert [s for s, _ in seen[ids["rescue"]]] == ["starting", "processing"]
    assert (await get_prediction(api, ids["rescue"]))["status"] == "succeeded"  # polling rescues it
    assert [s for s, _ in seen[ids["late"]]] == ["starting", "processing", "succeeded"]


async def test_replicate_bad_and_missing_signatures(
    sim: Simulator, api: httpx.AsyncClient, receiver: Receiver, clock: FakeClock
) -> None:
    sim.add_rule("forged", Faults(runtime=0.0, bad_signature=True))
    sim.add_rule("unsigned", Faults(runtime=0.0, signature="none"))
    await create(api, "forged", webhook=HOOK)
    await sim.drain()
    await create(api, "unsigned", webhook=HOOK)
    await sim.drain()
    forged, unsigned = receiver.requests
    assert forged.headers["webhook-signature"].startswith("v1,")
    with pytest.raises(VerificationError):
        verify_standard(forged.content, forged.headers, [sim.replicate_secret, sim.proxy_secret], now=clock.now)
    assert not [name for name in unsigned.headers if name.startswith("webhook-")]
    assert json.loads(unsigned.content)["status"] == "succeeded"


async def test_replicate_proxy_webhooks_use_the_proxy_secret(
    sim: Simulator, api: httpx.AsyncClient, receiver: Receiver, clock: FakeClock
) -> None:
    pid = (await create(api, proxy=True, webhook=HOOK))["id"]
    await sim.drain()
    (request,) = receiver.requests
    with pytest.raises(VerificationError):
        verify_standard(request.content, request.headers, [sim.replicate_secret], now=clock.now)
    assert verify_standard(request.content, request.headers, [sim.proxy_secret], now=clock.now)
    body = json.loads(request.content)
    assert body["id"] == pid and body["urls"]["get"] == f"https://api.replicate.com/v1/predictions/{pid}"
    assert (await get_prediction(api, pid, proxy=True)) == body

    old, sim.replicate_secret = sim.replicate_secret, "whsec_" + base64.b64encode(b"n" * 32).decode()
    await create(api, webhook=HOOK)  # native, after a rotation
    await sim.drain()
    rotated = receiver.requests[-1]
    assert verify_standard(rotated.content, rotated.headers, [sim.replicate_secret], now=clock.now)
    with pytest.raises(VerificationError):
        verify_standard(rotated.content, rotated.headers, [old], now=clock.now)


async def test_replicate_cancel(sim: Simulator, api: httpx.AsyncClient, receiver: Receiver, clock: FakeClock) -> None:
    sim.add_rule("long", Faults(runtime=30.0))
    pid = (await create(api, "long", webhook=HOOK, webhook_events_filter=["start", "completed"]))["id"]
    clock.advance(12.0)
    canceled = await cancel(api, pid)
    assert canceled["status"] == "canceled" and canceled["output"] is None and canceled["error"] is None
    assert canceled["started_at"] == "2027-01-15T08:00:10.000000Z"
    assert canceled["completed_at"] == "2027-01-15T08:00:12.000000Z"
    await sim.drain()  # the cancel woke the webhook sender: no 30 s wait
    assert [b["status"] for b in receiver.bodies()] == ["starting", "canceled"]
    assert receiver.bodies()[-1] == canceled
    clock.advance(60.0)
    assert (await get_prediction(api, pid))["status"] == "canceled"
    assert (await cancel(api, pid))["completed_at"] == canceled["completed_at"]
    early = (await create(api, "long"))["id"]
    assert (await cancel(api, early))["started_at"] is None  # canceled while starting
    done = (await create(api, "quick"))["id"]  # runtime 0: already terminal
    assert (await cancel(api, done))["status"] == "succeeded"
    stats = sim.stats()
    assert stats["tasks"][pid]["cancels"] == 2 and stats["tasks"][pid]["status"] == "canceled"
    assert stats["totals"]["cancels"] == 4


@pytest.mark.parametrize(
    ("outcome", "status", "error"),
    [
        ("error", "failed", "simulated failure"),
        ("request_moderated", "failed", "NSFW content detected"),
        ("content_moderated", "failed", "NSFW content detected"),
        ("canceled", "canceled", None),
        ("aborted", "aborted", None),
    ],
)
async def test_replicate_unsuccessful_outcomes(
    sim: Simulator, api: httpx.AsyncClient, receiver: Receiver, outcome: str, status: str, error: str | None
) -> None:
    sim.add_rule("", Faults(runtime=0.0, outcome=outcome, outputs=2))
    pid = (await create(api, webhook=HOOK, webhook_events_filter=list(EVENTS)))["id"]
    await sim.drain()
    body = await get_prediction(api, pid)
    assert body["status"] == status and body["output"] is None and body["completed_at"] == NOW_ISO
    assert body["error"] is None if error is None else error in body["error"]
    if outcome == "aborted":  # terminated before it started
        assert (body["started_at"], body["logs"], body["metrics"]) == (None, "", {})
        assert [b["status"] for b in receiver.bodies()] == ["starting", "aborted"]
    else:
        assert body["started_at"] == NOW_ISO and "Using seed: 42" in body["logs"]
        assert [b["status"] for b in receiver.bodies()] == ["starting", "processing", "processing", status]
    assert receiver.bodies()[-1] == body and sim.stats()["tasks"][pid]["status"] == status


async def test_replicate_data_removed_after_its_lifetime(
    sim: Simulator, api: httpx.AsyncClient, clock: FakeClock
) -> None:
    sim.add_rule("", Faults(runtime=0.0, outputs=2))
    pid = (await create(api))["id"]
    urls = (await get_prediction(api, pid))["output"]
    assert [(await api.get(url)).status_code for url in urls] == [200, 200]
    clock.advance(3599.0)
    kept = await get_prediction(api, pid)
    assert kept["data_removed"] is False and len(kept["output"]) == 2
    clock.advance(1.0)  # replicate_data_lifetime (3600 s) after completed_at
    removed = await get_prediction(api, pid)
    assert removed["data_removed"] is True and removed["output"] is None and removed["status"] == "succeeded"
    for url in urls + kept["output"]:
        response = await api.get(url)
        assert response.status_code == 404 and b"BlobNotFound" in response.content


async def test_replicate_url_lifetime_and_expired_first_url(
    sim: Simulator, api: httpx.AsyncClient, receiver: Receiver, clock: FakeClock
) -> None:
    sim.replicate_url_lifetime = 60.0
    sim.add_rule("expire", Faults(runtime=0.0, expired_url=True))
    pid = (await create(api))["id"]
    url = (await get_prediction(api, pid))["output"]
    clock.advance(59.0)
    assert (await api.get(url)).status_code == 200
    clock.advance(2.0)
    assert (await api.get(url)).status_code == 403
    assert (await api.get((await get_prediction(api, pid))["output"])).status_code == 200
    expiring = (await create(api, "expire me"))["id"]
    refused = await api.get((await get_prediction(api, expiring))["output"])
    assert refused.status_code == 403 and b"AuthenticationFailed" in refused.content
    assert (await api.get((await get_prediction(api, expiring))["output"])).status_code == 200
    hooked = (await create(api, "expire hooked", webhook=HOOK))["id"]
    await sim.drain()
    (request,) = receiver.requests
    assert (await api.get(json.loads(request.content)["output"])).status_code == 403  # the completed webhook's
    assert (await api.get((await get_prediction(api, hooked))["output"])).status_code == 200


async def test_replicate_submit_errors_then_accept(sim: Simulator, api: httpx.AsyncClient) -> None:
    sim.add_rule("busy", Faults(runtime=0.0, submit_errors=(429, 503)))
    first = await api.post(MODEL, json={"input": {"prompt": "busy"}}, headers=BEARER)
    assert first.status_code == 429 and first.headers["retry-after"] == "0"
    assert first.json()["detail"].startswith("Request was throttled.")
    second = await api.post("/replicate" + MODEL, json={"input": {"prompt": "busy"}}, headers=BEARER)
    assert second.status_code == 503
    pid = (await create(api, "busy"))["id"]
    stats = sim.stats()
    assert stats["tasks"][pid]["submits"] == 3
    assert stats["totals"]["submit_requests"] == 3 and stats["totals"]["submits_rejected"] == 2

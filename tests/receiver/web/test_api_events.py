"""`GET /v1/events` (server-sent events) in-process: order, filters, resumption, heartbeats, disconnects.

httpx's ASGITransport reads a whole answer before returning it, which an endless stream never
ends; :class:`SSE` drives the ASGI app directly and reads frames as they come.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.harness import Harness
from tests.receiver.web.test_api import AUTH, BODY, api_harness, drive

pytestmark = pytest.mark.anyio


class SSE:
    """One /v1/events connection: `frames()` parses what arrives; leaving the block disconnects."""

    def __init__(self, app: Any, query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.path = "/v1/events"
        self.query = urlencode(query or {})
        self.headers = {**AUTH, **(headers or {})}
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.buffer = ""
        self.body = b""

    async def __aenter__(self) -> SSE:
        started = asyncio.Event()
        sent_request = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.response_headers = {k.decode(): v.decode() for k, v in message["headers"]}
                started.set()
            elif message["type"] == "http.response.body":
                await self.chunks.put(message.get("body", b""))
                if not message.get("more_body", False):
                    await self.chunks.put(None)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "https",
            "path": self.path, "raw_path": self.path.encode(), "query_string": self.query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers.items()],
            "server": ("hooks.test", 443), "client": ("127.0.0.1", 5000), "root_path": "",
        }
        self.task = asyncio.create_task(self.app(scope, receive, send))
        await asyncio.wait_for(started.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, 5)  # the stream ends once the client is gone

    async def read_all(self) -> bytes:
        """The whole body of an answer that ends (an error)."""
        while (chunk := await asyncio.wait_for(self.chunks.get(), 5)) is not None:
            self.body += chunk
        return self.body

    async def frames(self) -> AsyncIterator[dict[str, str]]:
        while True:
            while "\n\n" not in self.buffer:
                chunk = await self.chunks.get()
                assert chunk is not None, "the stream ended"
                self.buffer += chunk.decode()
            raw, self.buffer = self.buffer.split("\n\n", 1)
            frame: dict[str, str] = {}
            for line in raw.split("\n"):
                name, _, value = line.partition(": ") if not line.startswith(":") else ("comment", "", line[2:])
                if line.startswith("retry:"):
                    name, value = "retry", line.removeprefix("retry:").strip()
                assert name not in frame, f"repeated field in {raw!r}"
                frame[name] = value
            yield frame

    async def events(self, count: int, within: float = 10) -> list[dict[str, Any]]:
        """The next `count` events (heartbeats and the retry line skipped), each as its parsed envelope."""
        found: list[dict[str, Any]] = []

        async def collect() -> None:
            async for frame in self.frames():
                if "data" in frame:
                    envelope = json.loads(frame["data"])
                    assert frame["id"] == str(envelope["seq"]) and frame["event"] == envelope["type"]
                    found.append(envelope)
                    if len(found) == count:
                        return

        await asyncio.wait_for(collect(), within)
        return found


async def finished_job(h: Harness, body: dict[str, Any] | None = None) -> str:
    answer = await h.client.post("/v1/jobs", json=body or BODY)
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    await drive(h, job_id)
    return job_id


async def outbox(h: Harness, **filters: Any) -> list[dict[str, Any]]:
    return [e.envelope() for e in await h.rt.store.events_after(0, **filters)]


@pytest.fixture(params=["sqlite", "postgres"])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with api_harness(tmp_path, request.param, sse_heartbeat=0.05) as harnessed:
        yield harnessed


async def test_events_in_seq_order_from_the_start(h: Harness) -> None:
    first = await finished_job(h)
    second = await finished_job(h)
    expected = await outbox(h)
    # job.submitted may be missing: a callback can beat the submit's answer (queued -> succeeded).
    assert [e["type"] for e in expected].count("job.stored") == 2
    async with SSE(h.app, {"after": "0"}) as sse:
        assert sse.status == 200
        assert sse.response_headers["content-type"].startswith("text/event-stream")
        assert sse.response_headers["cache-control"] == "no-cache"
        assert sse.response_headers["x-accel-buffering"] == "no"
        opening = await anext(sse.frames())
        assert opening == {"retry": "2000"}
        got = await sse.events(len(expected))
    assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)
    assert got == expected
    assert {e["data"]["id"] for e in got} == {first, second}
    stored = next(e for e in got if e["type"] == "job.stored" and e["data"]["id"] == first)
    assert stored["data"]["status"] == "stored" and stored["data"]["files"]


async def test_filters(h: Harness) -> None:
    first = await finished_job(h)
    await finished_job(h)
    only_stored = await outbox(h, types=frozenset({"job.stored"}))
    assert len(only_stored) == 2
    async with SSE(h.app, {"after": "0", "types": "job.stored"}) as sse:
        assert await sse.events(2) == only_stored
    mine = await outbox(h, job_id=first)
    async with SSE(h.app, {"after": "0", "job": first}) as sse:
        got = await sse.events(len(mine))
    assert got == mine and {e["data"]["id"] for e in got} == {first}
    # Nothing else arrives on the filtered streams: a third job's events do not show.
    async with SSE(h.app, {"after": str(mine[-1]["seq"]), "job": first}) as sse:
        await finished_job(h)
        with pytest.raises(TimeoutError):
            await sse.events(1, within=0.3)


async def test_resume_with_last_event_id_misses_and_repeats_nothing(h: Harness) -> None:
    for _ in range(3):
        await finished_job(h)
    expected = await outbox(h)
    assert len(expected) >= 3
    split = len(expected) // 2
    async with SSE(h.app, {"after": "0"}) as sse:
        head = await sse.events(split)
    # The header wins over ?after=.
    async with SSE(h.app, {"after": "0"}, {"last-event-id": str(head[-1]["seq"])}) as sse:
        rest = await sse.events(len(expected) - split)
        # ... and then the events of a job made after reconnecting, none twice.
        later = await finished_job(h)
        new = await outbox(h, job_id=later)
        rest += await sse.events(len(new))
    assert head + rest == expected + new


async def test_without_a_resume_point_only_new_events(h: Harness) -> None:
    await finished_job(h)
    before = {e["seq"] for e in await outbox(h)}
    async with SSE(h.app) as sse:
        await anext(sse.frames())  # retry: the stream is set up (the start point is fixed before answering)
        job_id = await finished_job(h)
        mine = await outbox(h, job_id=job_id)
        got = await sse.events(len(mine))
    assert got == mine and not before & {e["seq"] for e in got}


async def test_heartbeat_and_disconnect(h: Harness) -> None:
    async with SSE(h.app) as sse:
        frames = sse.frames()
        assert await anext(frames) == {"retry": "2000"}
        assert await asyncio.wait_for(anext(frames), 5) == {"comment": "heartbeat"}
        assert await asyncio.wait_for(anext(frames), 5) == {"comment": "heartbeat"}
    assert sse.task.done()


@pytest.mark.parametrize(("query", "headers", "field"), [
    ({"types": "job.stored,job.nope"}, {}, "types"),
    ({"after": "x"}, {}, "after"),
    ({"after": "-1"}, {}, "after"),
    ({}, {"last-event-id": "abc"}, "Last-Event-ID"),
    ({"job": "\u00e9"}, {}, "job"),
])
async def test_bad_parameters(tmp_path: Path, query: dict[str, str], headers: dict[str, str], field: str) -> None:
    async with api_harness(tmp_path) as h, SSE(h.app, query, headers) as sse:
        assert sse.status == 422
        assert json.loads(await sse.read_all())["error"]["field"] == field


async def test_head_answers_without_streaming(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as h:
        answer = await asyncio.wait_for(h.client.head("/v1/events"), 5)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")


async def test_needs_a_key(tmp_path: Path) -> None:
    async with api_harness(tmp_path) as h, SSE(h.app, headers={"authorization": "Bearer nope"}) as sse:
        assert sse.status == 401
        assert json.loads(await sse.read_all())["error"]["code"] == "unauthorized"

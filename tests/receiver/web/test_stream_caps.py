"""Caps on open event streams and long-polls (receiver/web/streams.py), in-process: per key and in all,
`/v1/events`, `/ui/events` and `GET /v1/jobs/{id}?wait=` counted together, and every way a stream or
long-poll ends gives its slot back.

Streams are driven through the ASGI app directly (tests/receiver/web/test_api_events.py's SSE: httpx's
ASGITransport reads an answer to its end); long-polls go through httpx's ASGITransport. Waits are for
events or bounded polls of the app's counter, never sleeps deciding an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.store import OutboxEvent, StoreUnavailable
from receiver.web.streams import StreamLimits
from tests.harness import Harness, harness
from tests.receiver.web.test_api import AUTH, BODY, KEY, OTHER_KEY
from tests.receiver.web.test_api_events import SSE

pytestmark = pytest.mark.anyio

OTHER = {"authorization": f"Bearer {OTHER_KEY}"}
TOTAL, PER_KEY = 3, 2


@contextlib.asynccontextmanager
async def capped(tmp_path: Path) -> AsyncIterator[Harness]:
    integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(f"{KEY},{OTHER_KEY}"), sse_heartbeat=0.05)
    async with harness(tmp_path, integrations=integrations, max_streams=TOTAL, max_streams_per_key=PER_KEY) as h:
        yield h


def limits(h: Harness) -> StreamLimits:
    found: StreamLimits = h.app.state.streams
    return found


def stream(h: Harness, headers: dict[str, str] | None = None, path: str = "/v1/events") -> SSE:
    sse = SSE(h.app, headers=headers)
    sse.path = path
    return sse


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def refused(sse: SSE) -> dict[str, Any]:
    """The API's 429: its error, after checking the status and Retry-After."""
    assert sse.status == 429 and sse.response_headers["retry-after"] == "5"
    body = await sse.read_all()
    assert KEY.encode() not in body and OTHER_KEY.encode() not in body
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["code"] == "too_many_streams"
    return error


async def test_a_key_holds_at_most_its_share_another_key_still_gets_in_and_closing_one_frees_it(
        tmp_path: Path) -> None:
    async with capped(tmp_path) as h, contextlib.AsyncExitStack() as held:
        first = await held.enter_async_context(stream(h))
        async with stream(h) as second:
            assert first.status == second.status == 200
            async with stream(h) as third:
                assert "FLUXHOOK_MAX_STREAMS_PER_KEY" in (await refused(third))["message"]
            async with stream(h, OTHER) as other:
                assert other.status == 200 and limits(h).open == 3
            assert (await h.client.head("/v1/events", headers=AUTH)).status_code == 200  # no stream, no slot
        assert limits(h).open == 1  # `second` closed
        async with stream(h) as again:
            assert again.status == 200
    assert limits(h).open == 0 and not limits(h).by_key


async def test_the_server_holds_at_most_max_streams_in_all(tmp_path: Path) -> None:
    async with capped(tmp_path) as h, contextlib.AsyncExitStack() as held:
        mine = [await held.enter_async_context(stream(h)) for _ in range(PER_KEY)]
        theirs = await held.enter_async_context(stream(h, OTHER))
        assert [s.status for s in [*mine, theirs]] == [200] * TOTAL
        async with stream(h, OTHER) as over:
            assert "FLUXHOOK_MAX_STREAMS" in (await refused(over))["message"]
        async with stream(h, OTHER, "/ui/events") as over_ui:
            assert over_ui.status == 429 and over_ui.response_headers["retry-after"] == "5"
        await mine[0].__aexit__(None, None, None)
        async with stream(h, OTHER) as now:
            assert now.status == 200


async def test_ui_streams_count_against_the_key_with_the_apis(tmp_path: Path) -> None:
    async with capped(tmp_path) as h, contextlib.AsyncExitStack() as held:
        api = [await held.enter_async_context(stream(h)) for _ in range(PER_KEY)]
        async with stream(h, path="/ui/events") as ui:
            assert ui.status == 429 and ui.response_headers["retry-after"] == "5"
            assert ui.response_headers["content-type"].startswith("text/plain")
            assert b"FLUXHOOK_MAX_STREAMS_PER_KEY" in await ui.read_all()
        async with stream(h, OTHER, "/ui/events") as theirs:
            assert theirs.status == 200
        await api[0].__aexit__(None, None, None)
        async with stream(h, path="/ui/events") as ui:
            assert ui.status == 200 and limits(h).by_key.total() == PER_KEY


async def test_a_long_poll_counts_while_it_waits(tmp_path: Path) -> None:
    async with capped(tmp_path) as h:
        created = await h.client.post("/v1/jobs", json=BODY, headers=AUTH)
        job_id = created.json()["id"]
        poll = asyncio.create_task(h.client.get(f"/v1/jobs/{job_id}", params={"wait": "30"}, headers=AUTH))
        await until(lambda: limits(h).open == 1)
        async with stream(h) as second:
            assert second.status == 200
            over = await h.client.get(f"/v1/jobs/{job_id}", params={"wait": "30"}, headers=AUTH)
            assert over.status_code == 429 and over.headers["retry-after"] == "5"
            assert over.json()["error"]["code"] == "too_many_streams"
            async with stream(h) as third:
                await refused(third)
            # A plain read is no long-poll: never refused.
            assert (await h.client.get(f"/v1/jobs/{job_id}", headers=AUTH)).status_code == 200
            # The job ends: the long-poll answers, and its slot is free again.
            assert (await h.client.post(f"/v1/jobs/{job_id}/cancel", headers=AUTH)).status_code == 200
            async with asyncio.timeout(5):
                answer = await poll
            assert answer.status_code == 200 and answer.json()["status"] == "canceled"
            assert limits(h).open == 1
            async with stream(h) as third:
                assert third.status == 200


async def test_a_long_poll_given_up_by_its_client_frees_its_slot(tmp_path: Path) -> None:
    async with capped(tmp_path) as h:
        job_id = (await h.client.post("/v1/jobs", json=BODY, headers=AUTH)).json()["id"]
        polls = [asyncio.create_task(h.client.get(f"/v1/jobs/{job_id}", params={"wait": "30"}, headers=AUTH))
                 for _ in range(PER_KEY)]
        await until(lambda: limits(h).open == PER_KEY)
        assert (await h.client.get(f"/v1/jobs/{job_id}", params={"wait": "1"}, headers=AUTH)).status_code == 429
        polls[0].cancel()
        await asyncio.gather(polls[0], return_exceptions=True)
        assert limits(h).open == PER_KEY - 1
        polls[1].cancel()
        await asyncio.gather(polls[1], return_exceptions=True)
        assert limits(h).open == 0


async def test_streams_and_long_polls_ended_by_the_store_free_their_slots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with capped(tmp_path) as h:
        fail = asyncio.Event()
        real = h.rt.feed.stream

        async def broken(after: int, **options: Any) -> AsyncIterator[OutboxEvent | None]:
            await fail.wait()
            raise StoreUnavailable("database is locked")
            yield None  # an async generator, like the feed's  # pragma: no cover

        monkeypatch.setattr(h.rt.feed, "stream", broken)
        async with stream(h) as failing:
            monkeypatch.setattr(h.rt.feed, "stream", real)
            async with stream(h) as healthy:
                assert failing.status == healthy.status == 200
                async with stream(h) as over:
                    await refused(over)
                fail.set()  # the store fails under the first stream: it ends (the client reconnects later)
                assert (await failing.read_all()).startswith(b"retry: ")
                await until(lambda: limits(h).open == 1)
                async with stream(h) as again:
                    assert again.status == 200
        assert limits(h).open == 0
        # A long-poll whose wait fails in the store: 503, and no slot kept.
        monkeypatch.setattr(h.rt.feed, "stream", broken)
        job_id = (await h.client.post("/v1/jobs", json=BODY, headers=AUTH)).json()["id"]
        answer = await h.client.get(f"/v1/jobs/{job_id}", params={"wait": "30"}, headers=AUTH)
        assert answer.status_code == 503 and limits(h).open == 0


async def test_a_stream_cancelled_by_shutdown_frees_its_slot(tmp_path: Path) -> None:
    async with capped(tmp_path) as h:
        sse = await stream(h).__aenter__()
        ui = await stream(h, OTHER, "/ui/events").__aenter__()
        assert sse.status == ui.status == 200 and limits(h).open == 2
        for task in (sse.task, ui.task):
            task.cancel()
        await asyncio.gather(sse.task, ui.task, return_exceptions=True)
        assert limits(h).open == 0 and not limits(h).by_key

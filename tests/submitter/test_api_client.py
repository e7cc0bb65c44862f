"""The /v1 API client against mock handlers that speak the contract (and against the real app, further down)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config.keys import parse_api_keys
from receiver.config.settings import Settings
from receiver.engine.sweep import sweep_once
from receiver.serve.background import serve_in_background
from submitter.api_client import (
    ApiError,
    ApiEvent,
    AsyncFluxhookClient,
    FluxhookClient,
    JobView,
    SSEDecoder,
)
from submitter.backoff import RetryPolicy
from tests.harness import PUBLIC, Harness, harness

BASE = "https://api.fluxhook.test"
KEY = "k" * 20
T0 = "2027-01-15T08:00:00.000Z"

Handler = Callable[[httpx.Request], httpx.Response]


def view(job_id: str = "fh_1", status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "provider": "bfl", "model": "flux-dev", "status": status, "error": None, "note": None,
            "metadata": {}, "provider_job_id": None, "created_at": T0, "updated_at": None, "submitted_at": None,
            "files": [], **extra}


def error(status: int, code: str, message: str, field: str | None = None, **kw: Any) -> httpx.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return httpx.Response(status, json={"error": body}, **kw)


def envelope(seq: int, kind: str, job: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"evt_{seq}", "seq": seq, "type": kind, "created_at": T0, "data": job}


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body for both clients: these chunks, then `then` raised (a dropped connection),
    or with `hang` (async only) a stream that never ends."""

    def __init__(self, *chunks: bytes, then: Exception | None = None, hang: bool = False) -> None:
        self.chunks, self.then, self.hang = chunks, then, hang

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.then is not None:
            raise self.then

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.then is not None:
            raise self.then
        if self.hang:
            await asyncio.Event().wait()


def stream(*chunks: bytes, **kw: Any) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body(*chunks, **kw))


class Api:
    """Runs the client under test, sync or async, against `handler`, recording requests and sleeps."""

    def __init__(self, mode: str, handler: Handler, **options: Any) -> None:
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        transport = httpx.MockTransport(record)
        options.setdefault("retry", RetryPolicy(attempts=3, base=0.5, cap=8.0))
        if mode == "sync":
            self.client: Any = FluxhookClient(BASE, KEY, transport=transport, sleep=self.sleeps.append, **options)
        else:
            async def sleep(seconds: float) -> None:
                self.sleeps.append(seconds)

            self.client = AsyncFluxhookClient(BASE, KEY, transport=transport, sleep=sleep, **options)

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    async def close(self) -> None:
        await self("aclose" if isinstance(self.client, AsyncFluxhookClient) else "close")


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> Callable[..., Api]:
    """Every test below runs once with each client."""
    return lambda handler, **options: Api(request.param, handler, **options)


# -- requests and answers --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_sends_the_contract_body_and_parses_the_view(api: Callable[..., Api]) -> None:
    stored = view(status="stored", files=[{"n": 0, "size": 3, "sha256": "ab", "content_type": "image/png",
                                           "location": "/r/fh_1/0.png", "url": "/v1/jobs/fh_1/files/0"}],
                  metadata={"who": "me"}, extra_field_from_a_newer_server=1)
    a = api(lambda r: httpx.Response(201, json=stored, headers={"location": "/v1/jobs/fh_1"}))
    job = await a("create", "bfl", "flux-dev", {"prompt": "fox"}, events=["start"], metadata={"who": "me"})
    await a.close()
    assert isinstance(job, JobView) and job.terminal and job.metadata == {"who": "me"}
    assert job.files[0].n == 0 and job.files[0].url == "/v1/jobs/fh_1/files/0" and job.created_at == T0
    (sent,) = a.requests
    assert sent.method == "POST" and str(sent.url) == f"{BASE}/v1/jobs"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content) == {"provider": "bfl", "model": "flux-dev", "params": {"prompt": "fox"},
                                        "events": ["start"], "metadata": {"who": "me"}}
    key = sent.headers["idempotency-key"]
    assert 1 <= len(key) <= 255 and key.isascii() and key.isprintable() and " " not in key


@pytest.mark.anyio
async def test_create_retries_with_the_same_idempotency_key(api: Callable[..., Api]) -> None:
    answers: list[Any] = [httpx.ConnectError("refused"), httpx.ReadTimeout("lost"),
                          error(503, "unavailable", "store down", headers={"retry-after": "3"}),
                          httpx.Response(200, json=view(), headers={"idempotent-replayed": "true"})]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    a = api(handler, retry=RetryPolicy(attempts=4, base=0.5, cap=8.0))
    job = await a("create", "bfl", "flux-dev", {"prompt": "fox"})
    await a.close()
    assert job.id == "fh_1" and not job.terminal
    assert len({r.headers["idempotency-key"] for r in a.requests}) == 1 and len(a.requests) == 4
    assert len(a.sleeps) == 3 and a.sleeps[2] == 3.0  # Retry-After honoured


@pytest.mark.anyio
async def test_too_many_streams_is_waited_out(api: Callable[..., Api]) -> None:
    """A long-poll over the server's stream caps is answered 429 with Retry-After: wait, then ask again."""
    answers = [error(429, "too_many_streams", "this key holds 16 streams", headers={"retry-after": "5"}),
               httpx.Response(200, json=view(status="stored"))]
    a = api(lambda r: answers.pop(0), retry=RetryPolicy(attempts=3, base=0.5, cap=8.0))
    job = await a("get", "fh_1")
    await a.close()
    assert job.status == "stored" and len(a.requests) == 2 and a.sleeps == [5.0]


@pytest.mark.anyio
async def test_a_given_idempotency_key_is_sent_as_is(api: Callable[..., Api]) -> None:
    a = api(lambda r: httpx.Response(201, json=view()))
    await a("create", "bfl", "flux-dev", {}, idempotency_key="order-42")
    await a.close()
    assert a.requests[0].headers["idempotency-key"] == "order-42"
    assert "events" not in json.loads(a.requests[0].content)


@pytest.mark.anyio
async def test_retries_are_bounded(api: Callable[..., Api]) -> None:
    a = api(lambda r: error(503, "unavailable", "store down"))
    with pytest.raises(ApiError) as info:
        await a("get", "fh_1")
    assert (info.value.status, info.value.code) == (503, "unavailable") and len(a.requests) == 3

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect, key {KEY}")

    b = api(refuse)
    with pytest.raises(ApiError) as info:
        await b("cancel", "fh_1")
    await a.close()
    await b.close()
    assert info.value.status is None and info.value.code == "unreachable" and len(b.requests) == 3
    assert KEY not in str(info.value)


@pytest.mark.anyio
async def test_error_answers_become_api_errors_without_the_key(api: Callable[..., Api]) -> None:
    answers = [
        error(422, "invalid", f"unknown provider (you sent key {KEY})", "provider"),
        error(409, "idempotency_conflict", "same key, different body"),
        httpx.Response(500, text=f"Internal Server Error {KEY}"),
        httpx.Response(200, text="not json"),
    ]
    a = api(lambda r: answers.pop(0))
    errors = []
    for _ in range(4):
        with pytest.raises(ApiError) as info:
            await a("create", "nope", "flux-dev", {})
        errors.append(info.value)
    await a.close()
    assert [(e.status, e.code, e.field) for e in errors] == [
        (422, "invalid", "provider"), (409, "idempotency_conflict", None), (500, "http_500", None),
        (200, "bad_response", None),
    ]
    assert len(a.requests) == 4  # a 500 is not one of the "try again" answers
    for e in errors:
        assert KEY not in e.message and KEY not in str(e) and KEY not in repr(e)
    assert "[redacted]" in errors[0].message and str(errors[0]).endswith("(provider)")
    assert KEY not in repr(a.client)


@pytest.mark.anyio
async def test_get_long_polls_and_names_a_missing_job(api: Callable[..., Api]) -> None:
    answers = [httpx.Response(200, json=view(status="failed", error="boom")),
               error(404, "not_found", "no job fh_x")]
    a = api(lambda r: answers.pop(0))
    job = await a("get", "fh_1", wait=5)
    with pytest.raises(ApiError) as info:
        await a("get", "fh_x")
    await a.close()
    assert job.terminal and job.error == "boom"
    assert a.requests[0].url.path == "/v1/jobs/fh_1" and a.requests[0].url.params["wait"] == "5"
    assert a.requests[0].extensions["timeout"]["read"] > 5  # the long-poll is not cut short by the read timeout
    assert "wait" not in a.requests[1].url.params and info.value.code == "not_found"


@pytest.mark.anyio
async def test_list_pages_and_iterates_every_page(api: Callable[..., Api]) -> None:
    pages = {None: ([view("fh_3"), view("fh_2")], "c2"), "c2": ([view("fh_1")], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        jobs, after = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"jobs": jobs, "next_cursor": after})

    a = api(handler)
    jobs, cursor = await a("list", status="failed", provider="bfl", limit=2)
    assert [j.id for j in jobs] == ["fh_3", "fh_2"] and cursor == "c2"
    assert dict(a.requests[0].url.params) == {"status": "failed", "provider": "bfl", "limit": "2"}
    every = a.client.iter_jobs(page_size=2)
    ids = [j.id async for j in every] if inspect.isasyncgen(every) else [j.id for j in every]
    await a.close()
    assert ids == ["fh_3", "fh_2", "fh_1"] and a.requests[-1].url.params["cursor"] == "c2"


@pytest.mark.anyio
async def test_cancel(api: Callable[..., Api]) -> None:
    answers = [httpx.Response(200, json=view(status="canceled")), error(409, "not_cancelable", "already stored")]
    a = api(lambda r: answers.pop(0))
    assert (await a("cancel", "fh_1")).status == "canceled"
    with pytest.raises(ApiError) as info:
        await a("cancel", "fh_1")
    await a.close()
    assert info.value.code == "not_cancelable" and a.requests[0].method == "POST"
    assert a.requests[0].url.path == "/v1/jobs/fh_1/cancel"


# -- files ------------------------------------------------------------------------------------------------------


def files_handler(request: httpx.Request) -> httpx.Response:
    if request.url.host == "bucket.s3.test":
        assert "authorization" not in request.headers
        return httpx.Response(200, content=b"PNG-from-s3", headers={"content-type": "image/png"})
    if request.url.path == "/v1/jobs/fh_1/files/0":
        return httpx.Response(200, content=b"PNG-local")
    if request.url.path == "/v1/jobs/fh_1/files/1":
        return httpx.Response(307, headers={"location": "https://bucket.s3.test/fh_1/1.png?X-Amz-Signature=abc"})
    if request.url.path == "/v1/jobs/fh_1/files/2":  # same origin: still no Authorization on the next hop
        return httpx.Response(307, headers={"location": "/presigned/fh_1/2.png"})
    if request.url.path == "/presigned/fh_1/2.png":
        return httpx.Response(200, content=b"" if "authorization" in request.headers else b"PNG-same-host")
    return error(404, "not_found", "no such stored file")


@pytest.mark.anyio
async def test_download_follows_the_redirect_without_our_key(api: Callable[..., Api], tmp_path: Path) -> None:
    a = api(files_handler)
    assert await a("download", "fh_1", 0) == b"PNG-local"
    assert await a("download", "fh_1", 1) == b"PNG-from-s3"
    assert await a("download", "fh_1", 2) == b"PNG-same-host"
    target = await a("download_to", "fh_1", 1, tmp_path / "out.png")
    with pytest.raises(ApiError) as info:
        await a("download_to", "fh_1", 7, tmp_path / "missing.png")
    await a.close()
    assert target == tmp_path / "out.png" and target.read_bytes() == b"PNG-from-s3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no partial file left by the failure
    assert info.value.code == "not_found"
    api_hops = [r for r in a.requests if r.url.path.startswith("/v1/")]
    other_hops = [r for r in a.requests if not r.url.path.startswith("/v1/")]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in api_hops)
    assert other_hops and not any("authorization" in r.headers for r in other_hops)


# -- server-sent events -------------------------------------------------------------------------------------------


def test_sse_decoder_follows_the_whatwg_rules() -> None:
    decoder = SSEDecoder()
    text = (
        "\ufeffretry: 2500\n: heartbeat\n\n"          # BOM, retry, a comment, an empty dispatch
        "id: 1\nevent: job.stored\ndata: {\"a\":\ndata:  1}\n\n"  # multi-line data; one leading space removed
        "data: no id here\r\n\r\n"                     # CRLF; the last id is kept
        "id\nevent: x\ndata\n\n"                       # fields without colons: empty id, empty data line
        "id: 5\x00\nretry: soon\ndata: nul\rdata:x\r\r"  # an id with NUL is ignored; CR line ends
        "event: lost\ndata: never dispatched\n"        # incomplete at the end of the stream
    ).encode()
    events = []
    for i in range(len(text)):  # byte by byte: CRLF and UTF-8 split across chunks
        events += decoder.feed(text[i:i + 1])
    assert [(e.type, e.data, e.last_id) for e in events] == [
        ("job.stored", '{"a":\n 1}', "1"),
        ("message", "no id here", "1"),
        ("x", "", ""),
        ("message", "nul\nx", ""),
    ]
    assert decoder.retry == 2.5 and decoder.last_id == ""
    decoder.reset()
    assert decoder.feed(b"data: fresh\n\n")[0].data == "fresh"  # the half event died with its connection


@pytest.mark.anyio
async def test_events_reconnect_with_last_event_id_and_honour_retry(api: Callable[..., Api]) -> None:
    e1, e2, e3 = (envelope(n, t, view(status=s)) for n, t, s in
                  ((7, "job.submitted", "submitted"), (8, "job.running", "running"), (9, "job.stored", "stored")))
    half = sse(e2)[:-20]
    answers = [
        stream(b"retry: 2500\n: heartbeat\n\n", sse(e1), half, then=httpx.RemoteProtocolError("peer closed")),
        error(503, "unavailable", "restarting"),
        stream(b"retry: 1000\n\n", sse(e2, e3)),
    ]
    a = api(lambda r: answers.pop(0))
    got: list[ApiEvent] = []
    events = a.client.events(job="fh_1", types=["job.running", "job.stored"], after=6)
    if inspect.isasyncgen(events):
        async with contextlib.aclosing(events):
            async for event in events:
                got.append(event)
                if len(got) == 3:
                    break
    else:
        with contextlib.closing(events):
            for event in events:
                got.append(event)
                if len(got) == 3:
                    break
    await a.close()
    assert [(e.seq, e.type, e.data.status) for e in got] == [(7, "job.submitted", "submitted"),
                                                            (8, "job.running", "running"), (9, "job.stored", "stored")]
    first, second, third = a.requests
    assert first.url.path == "/v1/events" and dict(first.url.params) == {"job": "fh_1",
                                                                        "types": "job.running,job.stored"}
    assert first.headers["accept"] == "text/event-stream" and first.headers["authorization"] == f"Bearer {KEY}"
    assert first.headers["last-event-id"] == "6"  # `after`
    assert second.headers["last-event-id"] == "7" and third.headers["last-event-id"] == "7"  # the half event is lost
    assert a.sleeps == [2.5, 5.0]  # the server's retry, then doubled for the second failure in a row


@pytest.mark.anyio
async def test_a_stream_that_keeps_failing_gives_up(api: Callable[..., Api]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    a = api(refuse)
    events = a.client.events()
    with pytest.raises(ApiError) as info:
        if inspect.isasyncgen(events):
            async for _ in events:
                pass
        else:
            for _ in events:
                pass
    await a.close()
    assert info.value.code == "unreachable" and len(a.requests) == 7


# -- wait -------------------------------------------------------------------------------------------------------


def waiting(job_states: list[str], events: httpx.Response | None = None) -> Handler:
    """GET /v1/jobs/fh_1 answers these statuses in turn; /v1/events answers `events`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            assert events is not None, "no event stream expected"
            return events
        status = job_states.pop(0) if len(job_states) > 1 else job_states[0]
        return httpx.Response(200, json=view(status=status))

    return handler


@pytest.mark.anyio
async def test_wait_returns_a_finished_job_without_subscribing(api: Callable[..., Api]) -> None:
    a = api(waiting(["stored"]))
    job = await a("wait", "fh_1", 30)
    await a.close()
    assert job.status == "stored" and [r.url.path for r in a.requests] == ["/v1/jobs/fh_1"]


@pytest.mark.anyio
async def test_wait_sees_a_job_that_finished_before_the_stream_started(api: Callable[..., Api]) -> None:
    # The stream would carry nothing more (the event went out before we subscribed): the check after subscribing
    # finds the job stored. The stream body raises if it is ever read.
    a = api(waiting(["running", "stored"], stream(then=AssertionError("stream read"))))
    job = await a("wait", "fh_1", 30)
    await a.close()
    assert job.status == "stored"
    assert [r.url.path for r in a.requests] == ["/v1/jobs/fh_1", "/v1/events", "/v1/jobs/fh_1"]
    assert a.requests[1].url.params["job"] == "fh_1" and "last-event-id" not in a.requests[1].headers


@pytest.mark.anyio
async def test_wait_returns_on_the_terminal_event(api: Callable[..., Api]) -> None:
    events = sse(envelope(3, "job.running", view(status="running")),
                 envelope(4, "job.failed", view(status="failed", error="nsfw")))
    a = api(waiting(["queued"], stream(b"retry: 2000\n\n", events, b": heartbeat\n\n")))
    job = await a("wait", "fh_1", 30)
    await a.close()
    assert (job.status, job.error) == ("failed", "nsfw") and len(a.requests) == 3


@pytest.mark.anyio
async def test_wait_long_polls_where_there_is_no_event_stream(api: Callable[..., Api]) -> None:
    a = api(waiting(["queued", "queued", "running", "stored"], httpx.Response(404, text="Not Found")))
    job = await a("wait", "fh_1", 600)
    await a.close()
    assert job.status == "stored"
    polls = [r for r in a.requests if r.url.path == "/v1/jobs/fh_1"]
    assert [r.url.params.get("wait") for r in polls] == [None, "60", "60", "60"]


@pytest.mark.anyio
async def test_events_where_there_is_no_event_stream_is_an_api_error(api: Callable[..., Api]) -> None:
    a = api(lambda r: httpx.Response(200, json={"not": "a stream"}))
    events = a.client.events()
    with pytest.raises(ApiError) as info:
        if inspect.isasyncgen(events):
            await events.__anext__()
        else:
            next(events)
    await a.close()
    assert (info.value.status, info.value.code) == (200, "no_event_stream") and len(a.requests) == 1


@pytest.mark.anyio
async def test_async_wait_times_out() -> None:
    client = AsyncFluxhookClient(BASE, KEY, transport=httpx.MockTransport(waiting(["running"], stream(hang=True))))
    async with client:
        with pytest.raises(TimeoutError, match="fh_1 not finished"):
            await client.wait("fh_1", 0.05)  # the stream never ends: any timeout gives the same outcome
    assert client._http.is_closed


def test_sync_wait_times_out_between_heartbeats() -> None:
    ticks = iter(range(100))
    heartbeats = stream(*[b": heartbeat\n\n"] * 50)
    client = FluxhookClient(BASE, KEY, transport=httpx.MockTransport(waiting(["running"], heartbeats)),
                            clock=lambda: float(next(ticks)))
    with client, pytest.raises(TimeoutError, match="fh_1 not finished after 5 s"):
        client.wait("fh_1", 5)
    assert client._http.is_closed


def test_client_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="http"):
        FluxhookClient("ftp://x", KEY)
    with pytest.raises(ValueError, match="key"):
        FluxhookClient(BASE, "")


# -- against the real app ------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def real_app(tmp_path: Path) -> AsyncIterator[Harness]:
    """The receiver app in-process (harness: simulator, manual clock, no background workers), API on."""
    integrations = dataclasses.replace(Settings.from_env({}).integrations, api_keys=parse_api_keys(KEY))
    async with harness(tmp_path, integrations=integrations) as h:
        yield h


async def finish(h: Harness) -> None:
    """Submit what the API queued, deliver the callbacks, store the files."""
    await sweep_once(h.rt)
    await h.settle()
    await sweep_once(h.rt)


@pytest.mark.anyio
async def test_the_real_app_create_get_list_download_cancel(tmp_path: Path) -> None:
    async with real_app(tmp_path) as h, AsyncFluxhookClient(
        PUBLIC, KEY, transport=httpx.ASGITransport(h.app)
    ) as client:
        job = await client.create("bfl", "flux-dev", {"prompt": "a fox"}, metadata={"order": 7},
                                  idempotency_key="order-7")
        assert job.status == "queued" and job.metadata == {"order": 7} and job.files == ()
        again = await client.create("bfl", "flux-dev", {"prompt": "a fox"}, metadata={"order": 7},
                                    idempotency_key="order-7")
        assert again.id == job.id
        with pytest.raises(ApiError) as info:
            await client.create("bfl", "flux-dev", {"prompt": "a cat"}, idempotency_key="order-7")
        assert info.value.status == 409 and info.value.code == "idempotency_conflict"
        with pytest.raises(ApiError) as info:
            await client.create("nope", "flux-dev", {"prompt": "x"})
        assert (info.value.status, info.value.code, info.value.field) == (422, "invalid", "provider")

        await finish(h)
        done = await client.wait(job.id, 30)  # terminal already: answered by the first GET
        assert done.status == "stored" and done.terminal and done.submitted_at is not None
        (file,) = done.files
        data = await client.download(job.id, file.n)
        assert hashlib.sha256(data).hexdigest() == file.sha256 and len(data) == file.size
        path = await client.download_to(job.id, 0, tmp_path / "fox.png")
        assert path.read_bytes() == data
        with pytest.raises(ApiError) as info:
            await client.download(job.id, 5)
        assert info.value.code == "not_found"

        h.clock.advance(1)  # newest first: the manual clock would give both jobs the same time
        held = await client.create("bfl", "flux-dev", {"prompt": "held"})
        jobs, cursor = await client.list(limit=1)
        assert [j.id for j in jobs] == [held.id] and cursor is not None
        assert [j.id async for j in client.iter_jobs(page_size=1)] == [held.id, job.id]
        assert [j.id for j in (await client.list(status="stored"))[0]] == [job.id]

        assert (await client.cancel(held.id)).status == "canceled"
        assert (await client.cancel(held.id)).status == "canceled"
        with pytest.raises(ApiError) as info:
            await client.cancel(job.id)
        assert (info.value.status, info.value.code) == (409, "not_cancelable")
        with pytest.raises(ApiError) as info:
            await client.get("fh_nope")
        assert (info.value.status, info.value.code) == (404, "not_found")

        async with AsyncFluxhookClient(PUBLIC, "w" * 20, transport=httpx.ASGITransport(h.app)) as stranger:
            with pytest.raises(ApiError) as info:
                await stranger.list()
        assert (info.value.status, info.value.code) == (401, "unauthorized") and "w" * 20 not in str(info.value)


def test_the_real_app_from_the_sync_client(tmp_path: Path) -> None:
    """The sync client over a real loopback server (the sync client cannot use ASGITransport)."""

    async def scenario() -> None:
        async with real_app(tmp_path) as h, serve_in_background(h.app) as url:

            def create() -> tuple[JobView, JobView]:
                with FluxhookClient(url, KEY) as client:
                    job = client.create("bfl", "flux-dev", {"prompt": "sync fox"})
                    return job, client.get(job.id)

            created, job = await asyncio.to_thread(create)
            assert job == created and job.status == "queued"
            job_id = job.id
            await finish(h)

            def fetch() -> tuple[JobView, bytes]:
                with FluxhookClient(url, KEY) as client:
                    return client.wait(job_id, 30), client.download(job_id, 0)

            done, data = await asyncio.to_thread(fetch)
            assert done.status == "stored" and hashlib.sha256(data).hexdigest() == done.files[0].sha256

    asyncio.run(scenario())


class Spy(httpx.AsyncBaseTransport):
    """Real HTTP, recording paths; `subscribed` is set once an event stream has answered."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []
        self.subscribed = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path + ("?" + request.url.query.decode() if request.url.query else ""))
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/v1/events":
            self.subscribed.set()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_the_real_event_stream_over_loopback(tmp_path: Path) -> None:
    """SSE needs a real server (ASGITransport buffers a streaming answer): uvicorn on loopback."""
    async with real_app(tmp_path) as h, serve_in_background(h.app) as url:
        spy = Spy()
        async with AsyncFluxhookClient(url, KEY, transport=spy) as client:
            job = await client.create("bfl", "flux-dev", {"prompt": "watch me"})
            seen: list[ApiEvent] = []

            async def watch() -> None:
                async with contextlib.aclosing(client.events(job=job.id)) as events:
                    async for event in events:
                        seen.append(event)
                        if event.type == "job.stored":
                            return

            watcher = asyncio.create_task(watch())
            waiter = asyncio.create_task(client.wait(job.id, 30))
            async with asyncio.timeout(30):
                while spy.paths.count("/v1/events?job=" + job.id) < 2:  # both subscribed: now let the job run
                    spy.subscribed.clear()
                    await spy.subscribed.wait()
                await finish(h)
                await watcher
                done = await waiter
            assert done.status == "stored" and done.files
            types = [e.type for e in seen]  # job.submitted is missed when the callback beats the submit answer
            assert types[-1] == "job.stored" and types in (["job.submitted", "job.stored"], ["job.stored"])
            assert all(e.data.id == job.id for e in seen) and [e.seq for e in seen] == sorted({e.seq for e in seen})
            assert not any("wait=" in p for p in spy.paths)  # waited on the stream, not by long-polling

            # Resuming from a position replays what came after it, in order, once.
            again: list[ApiEvent] = []
            async with asyncio.timeout(30), contextlib.aclosing(
                client.events(job=job.id, after=seen[0].seq - 1)
            ) as events:
                async for event in events:
                    again.append(event)
                    if event.type == "job.stored":
                        break
            assert again == seen

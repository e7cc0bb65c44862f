"""The client calls beyond a job's life (submitter/api_client/operations.py): timeline, retry, report, file_url,
create_once and watch, with both clients, against mock handlers that speak the contract."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from submitter.api_client import ApiError, JobView
from tests.submitter.test_api_client import BASE, KEY, Api, envelope, error, sse, stream, view

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> Callable[..., Api]:
    """Every test below runs once with each client."""
    return lambda handler, **options: Api(request.param, handler, **options)


async def collect(a: Api, method: str, *args: Any) -> list[Any]:
    """Everything a generator method of either client yields."""
    found = getattr(a.client, method)(*args)
    if hasattr(found, "__aiter__"):
        return [item async for item in found]
    return list(found)


async def test_timeline_retry_and_report(api: Callable[..., Api]) -> None:
    rows = [{"at": "2027-01-15T08:00:00.000Z", "kind": "created", "detail": "bfl flux-dev"},
            {"at": "2027-01-15T08:00:01.000Z", "kind": "callback", "detail": "accepted:hmac; said ready", "id": 7}]
    report = {"since": None, "providers": [], "orphan_callbacks": None, "orphan_callbacks_note": "..."}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/timeline"):
            return httpx.Response(200, json={"job": view(status="stored"), "timeline": rows})
        if request.url.path.endswith("/retry"):
            return httpx.Response(200, json=view(status="succeeded"))
        return httpx.Response(200, json=report)

    a = api(handler)
    job, got = await a("timeline", "fh_1")
    assert isinstance(job, JobView) and job.status == "stored" and got == rows
    assert (await a("retry", "fh_1")).status == "succeeded"
    assert await a("report", "2027-01-01T00:00:00.000Z") == report
    assert await a("report") == report
    await a.close()
    assert [(r.method, r.url.path, dict(r.url.params)) for r in a.requests] == [
        ("GET", "/v1/jobs/fh_1/timeline", {}), ("POST", "/v1/jobs/fh_1/retry", {}),
        ("GET", "/v1/report", {"since": "2027-01-01T00:00:00.000Z"}), ("GET", "/v1/report", {})]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in a.requests)


async def test_retry_refusal_is_an_api_error(api: Callable[..., Api]) -> None:
    a = api(lambda r: error(409, "not_retryable", "job fh_1 cannot be retried: it is stored"))
    with pytest.raises(ApiError) as info:
        await a("retry", "fh_1")
    await a.close()
    assert (info.value.status, info.value.code) == (409, "not_retryable") and len(a.requests) == 1


async def test_file_url_reads_the_redirect_and_downloads_nothing(api: Callable[..., Api]) -> None:
    signed = "https://bucket.s3.example/fh_1/0.png?X-Amz-Expires=120&X-Amz-Signature=abc"
    a = api(lambda r: httpx.Response(307, headers={"location": signed}))
    assert await a("file_url", "fh_1", 0, expires=120) == signed
    await a.close()
    (sent,) = a.requests
    assert sent.method == "HEAD" and sent.url.path == "/v1/jobs/fh_1/files/0" and sent.url.params["expires"] == "120"

    a = api(lambda r: httpx.Response(200, headers={"content-type": "image/png"}))  # results in a folder
    assert await a("file_url", "fh_1", 2) == f"{BASE}/v1/jobs/fh_1/files/2"
    await a.close()
    assert [r.method for r in a.requests] == ["HEAD"] and "expires" not in a.requests[0].url.params

    def missing(request: httpx.Request) -> httpx.Response:  # a HEAD answer has no body: the GET says why
        return httpx.Response(404) if request.method == "HEAD" else error(404, "not_found", "no such stored file")

    a = api(missing)
    with pytest.raises(ApiError) as info:
        await a("file_url", "fh_1", 9)
    await a.close()
    assert info.value.message == "no such stored file" and [r.method for r in a.requests] == ["HEAD", "GET"]


async def test_create_once_says_whether_it_made_the_job(api: Callable[..., Api]) -> None:
    answers = [httpx.Response(201, json=view()), httpx.Response(200, json=view(), headers={"idempotent-replayed":
                                                                                              "true"})]
    a = api(lambda r: answers.pop(0))
    first = await a("create_once", "bfl", "flux-dev", {"prompt": "fox"}, metadata={"line": 1}, idempotency_key="k1")
    again = await a("create_once", "bfl", "flux-dev", {"prompt": "fox"}, metadata={"line": 1}, idempotency_key="k1")
    await a.close()
    assert first[1] is True and again[1] is False and first[0] == again[0]
    assert [r.headers["idempotency-key"] for r in a.requests] == ["k1", "k1"]
    assert json.loads(a.requests[0].content)["metadata"] == {"line": 1}


async def test_watch_follows_many_jobs_on_one_stream(api: Callable[..., Api]) -> None:
    """At connection each job is read (one already finished is news at once), then only its events count;
    another job's events are ignored, and the stream is left once every job is terminal."""
    events = sse(envelope(3, "job.submitted", view("fh_x", "submitted")),
                 envelope(4, "job.running", view("fh_a", "running")),
                 envelope(5, "job.running", view("fh_a", "running")),  # seen already: no news
                 envelope(6, "job.stored", view("fh_a", "stored")))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            return stream(b"retry: 2000\n\n", events, then=AssertionError("read past the end"))
        return httpx.Response(200, json=view(request.url.path.rsplit("/", 1)[1],
                                             "queued" if request.url.path.endswith("fh_a") else "failed"))

    a = api(handler)
    seen = await collect(a, "watch", ["fh_a", "fh_b"])
    await a.close()
    assert [(v.id, v.status) for v in seen] == [("fh_a", "queued"), ("fh_b", "failed"), ("fh_a", "running"),
                                                ("fh_a", "stored")]
    assert "job" not in a.requests[0].url.params  # one stream for every job


async def test_watch_long_polls_where_there_is_no_event_stream(api: Callable[..., Api]) -> None:
    states = {"fh_a": ["queued", "running", "stored"], "fh_b": ["moderated"]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            return httpx.Response(404, text="Not Found")
        job_id = request.url.path.rsplit("/", 1)[1]
        left = states[job_id]
        return httpx.Response(200, json=view(job_id, left.pop(0) if len(left) > 1 else left[0]))

    a = api(handler)
    seen = await collect(a, "watch", ["fh_a", "fh_b"])
    await a.close()
    assert [(v.id, v.status) for v in seen] == [("fh_a", "queued"), ("fh_a", "running"), ("fh_a", "stored"),
                                                ("fh_b", "moderated")]
    assert [r.url.params.get("wait") for r in a.requests if r.url.path == "/v1/jobs/fh_a"] == [None, "60", "60"]

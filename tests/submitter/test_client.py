from __future__ import annotations

import email.utils

import httpx
import pytest

from submitter.backoff import RetryPolicy, parse_retry_after
from submitter.client import Provider, ProviderClient
from submitter.dialects import DIALECTS
from submitter.errors import PollFailed, ProviderUnavailable, SubmitAmbiguous, SubmitRejected
from submitter.status import Status

pytestmark = pytest.mark.anyio
NOW = 1_800_000_000.0


def make(handler, provider: str = "bfl", attempts: int = 4) -> tuple[ProviderClient, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = ProviderClient(
        http, Provider(DIALECTS[provider], "https://api.test", "secret-key"),
        policy=RetryPolicy(attempts=attempts), sleep=sleep, clock=lambda: NOW,
    )
    return client, sleeps


async def test_submit_sends_webhook_and_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t1", "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=t1"})

    client, _ = make(handler)
    answer = await client.submit("flux-dev", {"prompt": "p"}, "https://hooks.test/h", "whs")
    assert answer.provider_job_id == "t1"
    (request,) = seen
    assert request.url == "https://api.test/v1/flux-dev"
    assert request.headers["x-key"] == "secret-key"
    body = httpx.Response(200, content=request.content).json()
    assert body == {"prompt": "p", "webhook_url": "https://hooks.test/h", "webhook_secret": "whs"}


async def test_proxy_uses_bearer_and_its_own_path() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t1", "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=t1"})

    client, _ = make(handler, "cometapi")
    answer = await client.submit("flux-dev", {"prompt": "p"}, "https://h", "s")
    assert seen[0].url.path == "/flux/v1/flux-dev"
    assert seen[0].headers["authorization"] == "Bearer secret-key" and "x-key" not in seen[0].headers
    # The echoed BFL polling URL is never used with a proxy key.
    assert client.status_url(answer.provider_job_id, answer.polling_url) == "https://api.test/flux/v1/get_result?id=t1"


async def test_retries_429_and_5xx_honouring_retry_after() -> None:
    answers = iter([
        httpx.Response(429, headers={"retry-after": "7"}, json={"detail": "busy"}),
        httpx.Response(503, json={"detail": "maintenance"}),
        httpx.Response(200, json={"id": "t1", "polling_url": "https://api.bfl.ai/v1/get_result?id=t1"}),
    ])
    client, sleeps = make(lambda request: next(answers))
    answer = await client.submit("flux-dev", {}, "https://h", "s")
    assert answer.provider_job_id == "t1"
    assert sleeps[0] == 7.0 and len(sleeps) == 2 and 0 < sleeps[1] <= 1.0


async def test_retry_after_is_capped() -> None:
    answers = iter([httpx.Response(429, headers={"retry-after": "86400"}), httpx.Response(200, json={"id": "x"})])
    client, sleeps = make(lambda request: next(answers))
    await client.submit("flux-dev", {}, "https://h", "s")
    assert sleeps == [RetryPolicy().max_retry_after]


async def test_gives_up_after_attempts_with_nothing_created() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(502, text="bad gateway")

    client, _ = make(handler, attempts=3)
    with pytest.raises(ProviderUnavailable, match="HTTP 502"):
        await client.submit("flux-dev", {}, "https://h", "s")
    assert len(calls) == 3


async def test_connection_errors_before_sending_are_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"id": "t"})

    client, _ = make(handler)
    assert (await client.submit("flux-dev", {}, "https://h", "s")).provider_job_id == "t"
    assert len(calls) == 3


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
async def test_no_answer_after_sending_is_ambiguous_and_not_resubmitted(error: type[httpx.HTTPError]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise error("lost", request=request)

    client, _ = make(handler)
    with pytest.raises(SubmitAmbiguous):
        await client.submit("flux-dev", {}, "https://h", "s")
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(422, json={"detail": [{"loc": ["body", "width"], "msg": "multiple of 32", "type": "x"}]}),
         "multiple of 32"),
        (httpx.Response(402, json={"detail": "Insufficient credits"}), "Insufficient credits"),
        (httpx.Response(400, json={"error": {"message": "bad prompt", "type": "comet_api_error"}}), "bad prompt"),
        (httpx.Response(403, text="<html>forbidden</html>"), "forbidden"),
    ],
)
async def test_4xx_rejects_with_the_providers_message(response: httpx.Response, message: str) -> None:
    client, sleeps = make(lambda request: response)
    with pytest.raises(SubmitRejected, match=message) as info:
        await client.submit("flux-dev", {}, "https://h", "s")
    assert info.value.status_code == response.status_code and sleeps == []
    assert "secret-key" not in str(info.value)


async def test_poll_prefers_trusted_polling_url() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"id": "t1", "status": "Pending"})

    client, _ = make(handler)
    await client.poll("t1", "https://api.eu2.bfl.ai/v1/get_result?id=t1")
    await client.poll("t1", "https://evil.example/v1/get_result?id=t1")
    await client.poll("t1", None)
    assert seen == [
        "https://api.eu2.bfl.ai/v1/get_result?id=t1",
        "https://api.test/v1/get_result?id=t1",
        "https://api.test/v1/get_result?id=t1",
    ]


async def test_poll_errors() -> None:
    client, _ = make(lambda request: httpx.Response(404))
    assert (await client.poll("t1")).not_found
    client, _ = make(lambda request: httpx.Response(500))
    with pytest.raises(PollFailed):
        await client.poll("t1")
    client, _ = make(lambda request: httpx.Response(200, text="<html>"))
    with pytest.raises(PollFailed):
        await client.poll("t1")


def test_parse_retry_after() -> None:
    assert parse_retry_after("5", NOW) == 5.0
    assert parse_retry_after(email.utils.formatdate(NOW + 30, usegmt=True), NOW) == 30.0
    assert parse_retry_after(email.utils.formatdate(NOW - 30, usegmt=True), NOW) == 0.0
    for junk in (None, "", "soon", "-1", "1.5", "Mon, 99 Foo 2026"):
        assert parse_retry_after(junk, NOW) is None


def test_backoff_grows_with_jitter_and_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0)
    for attempt in range(10):
        delay = policy.delay(attempt)
        ceiling = min(8.0, 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling


async def test_unexpected_5xx_on_submit_is_ambiguous_not_a_rejection() -> None:
    client, sleeps = make(lambda request: httpx.Response(524, text="origin timeout"))
    with pytest.raises(SubmitAmbiguous, match="524"):
        await client.submit("flux-dev", {}, "https://h", "s")
    assert sleeps == []


async def test_retries_stop_within_the_budget() -> None:
    """Retrying must end inside the caller's lease on the job: pauses count against the budget."""
    now = [NOW]
    calls = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(now[0])
        return httpx.Response(429, headers={"retry-after": "40"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = ProviderClient(http, Provider(DIALECTS["bfl"], "https://api.test", "k"),
                            policy=RetryPolicy(attempts=10), sleep=sleep, clock=lambda: now[0])
    with pytest.raises(ProviderUnavailable):
        await client.submit("flux-dev", {}, "https://h", "s", budget=100)
    assert calls == [NOW, NOW + 40, NOW + 80]  # a third 40 s pause would end past 100 s


async def test_cancel_uses_the_dialects_cancel_path_or_reports_none() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "p1", "status": "canceled"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    replicate = ProviderClient(http, Provider(DIALECTS["deerapi-replicate"], "https://api.test", "key"))
    observation = await replicate.cancel("p1")
    assert observation is not None and observation.status == Status.CANCELED
    assert seen[0].method == "POST" and seen[0].url.path == "/replicate/v1/predictions/p1/cancel"
    assert seen[0].headers["authorization"] == "Bearer key"
    bfl = ProviderClient(http, Provider(DIALECTS["bfl"], "https://api.test", "key"))
    assert await bfl.cancel("t1") is None  # BFL has no cancel call
    assert len(seen) == 1


def polling_client(base_url: str, provider: str = "bfl") -> tuple[ProviderClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "t1", "status": "Pending"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ProviderClient(http, Provider(DIALECTS[provider], base_url, "secret-key")), seen


@pytest.mark.parametrize(
    "polling_url",
    [
        "http://api.eu2.bfl.ai/v1/get_result?id=t1",  # the key would travel in clear
        "HTTP://api.eu2.bfl.ai/v1/get_result?id=t1",
        "http://api.test/v1/get_result?id=t1",  # the configured host, but downgraded to http
        "https://evil.com\\.bfl.ai/v1/get_result?id=t1",  # malformed hosts that end like *.bfl.ai
        "https://evil.com%00.bfl.ai/v1/get_result?id=t1",
        "https://evil.com%2e.bfl.ai/v1/get_result?id=t1",
        "https://a_b.bfl.ai/v1/get_result?id=t1",
        "https://api.eu2.bfl.ai\\@evil.example/v1/get_result?id=t1",  # urlsplit and httpx disagree on the host
        "https://user:pw@api.eu2.bfl.ai/v1/get_result?id=t1",
        "https://bfl.ai/v1/get_result?id=t1",
        "https://evil.example/v1/get_result?id=t1",
        "ftp://api.eu2.bfl.ai/v1/get_result?id=t1",
        "//api.eu2.bfl.ai/v1/get_result?id=t1",
        "not a url",
    ],
)
async def test_untrusted_polling_url_is_ignored_and_the_base_url_polled(polling_url: str) -> None:
    client, seen = polling_client("https://api.test")
    await client.poll("t1", polling_url)
    (request,) = seen
    assert str(request.url) == "https://api.test/v1/get_result?id=t1"
    assert request.headers["x-key"] == "secret-key"


async def test_https_polling_url_under_the_polling_hosts_gets_the_key() -> None:
    client, seen = polling_client("https://api.bfl.ai")
    for url in ("https://api.eu2.bfl.ai/v1/get_result?id=t1", "https://API.US1.BFL.AI/v1/get_result?id=t1",
                "https://api.bfl.ai:8443/v1/get_result?id=t1"):
        await client.poll("t1", url)
    assert [r.url.host for r in seen] == ["api.eu2.bfl.ai", "api.us1.bfl.ai", "api.bfl.ai"]
    assert all(r.url.scheme == "https" and r.headers["x-key"] == "secret-key" for r in seen)


async def test_http_base_url_is_the_users_choice() -> None:
    """A simulator configured over http: its own polling URLs (same origin) are still used."""
    client, seen = polling_client("http://127.0.0.1:8080")
    await client.poll("t1", "http://127.0.0.1:8080/v1/get_result?id=t1&region=x")
    await client.poll("t1", "http://127.0.0.1:9999/v1/get_result?id=t1")  # another origin: not trusted
    await client.poll("t1", "http://api.eu2.bfl.ai/v1/get_result?id=t1")
    await client.poll("t1", "https://api.eu2.bfl.ai/v1/get_result?id=t1")
    assert [str(r.url) for r in seen] == [
        "http://127.0.0.1:8080/v1/get_result?id=t1&region=x",
        "http://127.0.0.1:8080/v1/get_result?id=t1",
        "http://127.0.0.1:8080/v1/get_result?id=t1",
        "https://api.eu2.bfl.ai/v1/get_result?id=t1",
    ]
    assert client.status_url("t1", None) == "http://127.0.0.1:8080/v1/get_result?id=t1"

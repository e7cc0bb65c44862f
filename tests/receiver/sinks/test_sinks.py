"""The event sinks (receiver/sinks): webhooks out against a real loopback endpoint, Redis Streams and
NATS JetStream against the real servers .ci/run starts (missing, these tests fail: they never skip)."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver.config.integrations import EVENT_TYPES, TERMINAL_EVENTS
from receiver.config.settings import Settings
from receiver.sinks import SINK_KINDS, Attempt, Sink, SinkError, sinks_from_settings
from receiver.sinks.jetstream import NatsSink
from receiver.sinks.redis_streams import RedisSink
from receiver.sinks.webhook import WebhookSink
from submitter.backoff import RETRY_AFTER_CAP, parse_retry_after
from tests.sinks_support import NATS_URL, REDIS_URL, Endpoint, Reply, event, free_port, require_nats, require_redis

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def webhook_sinks(url: str, **env: str) -> list[Sink]:
    settings = Settings.from_env({"FLUXHOOK_FORWARD_URL": url, "FLUXHOOK_FORWARD_SECRET": SECRET, **env})
    return sinks_from_settings(settings)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    async with Endpoint() as server:
        yield server


@pytest.fixture
async def hook(endpoint: Endpoint) -> AsyncIterator[Sink]:
    (sink,) = webhook_sinks(endpoint.url + "/hooks/in")
    await sink.start()
    try:
        yield sink
    finally:
        await sink.close()


# -- webhooks out ---------------------------------------------------------------------------------


async def test_webhook_posts_the_envelope_signed_the_standard_way(endpoint: Endpoint, hook: Sink) -> None:
    evt = event()
    attempt = await hook.deliver(evt)
    assert attempt.ok and attempt.code == 200 and attempt.error is None and attempt.latency_ms > 0
    (request,) = endpoint.requests
    assert request.method == "POST" and request.target == "/hooks/in"
    assert request.body == evt.body()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("fluxhook/")
    assert request.headers["webhook-id"] == evt.id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert Webhook(SECRET).verify(request.body, request.headers) == evt.envelope()


async def test_webhook_id_is_the_event_id_on_every_attempt(endpoint: Endpoint, hook: Sink) -> None:
    evt = event()
    endpoint.replies.extend([Reply(503), Reply(500), Reply(200)])
    attempts = [await hook.deliver(evt) for _ in range(3)]
    assert [a.ok for a in attempts] == [False, False, True]
    assert {r.headers["webhook-id"] for r in endpoint.requests} == {evt.id}
    for request in endpoint.requests:
        Webhook(SECRET).verify(request.body, request.headers)


async def test_503_is_retried_after_what_retry_after_says_in_seconds(endpoint: Endpoint, hook: Sink) -> None:
    endpoint.replies.append(Reply(503, {"retry-after": "120"}))
    attempt = await hook.deliver(event())
    assert attempt == Attempt(ok=False, code=503, latency_ms=attempt.latency_ms, error="HTTP 503", retry_after=120.0)


async def test_retry_after_as_an_http_date(endpoint: Endpoint, hook: Sink) -> None:
    when = email.utils.formatdate(time.time() + 300, usegmt=True)
    endpoint.replies.append(Reply(429, {"retry-after": when}))
    attempt = await hook.deliver(event())
    assert not attempt.ok and not attempt.permanent and not attempt.gone and attempt.code == 429
    assert attempt.retry_after is not None and 240 <= attempt.retry_after <= 300


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), (" 30 ", 30.0), ("99999999", RETRY_AFTER_CAP), ("soon", None), ("", None), (None, None),
     ("-5", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_date_is_relative_to_now() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == 90.0


@pytest.mark.parametrize("code", [408, 425, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(endpoint: Endpoint, hook: Sink, code: int) -> None:
    endpoint.replies.append(Reply(code))
    attempt = await hook.deliver(event())
    assert (attempt.ok, attempt.code, attempt.permanent, attempt.gone, attempt.retry_after) == (
        False, code, False, False, None)


async def test_410_gone_disables_the_sink(endpoint: Endpoint, hook: Sink) -> None:
    endpoint.replies.append(Reply(410))
    attempt = await hook.deliver(event())
    assert not attempt.ok and attempt.gone and attempt.code == 410


@pytest.mark.parametrize("code", [400, 401, 403, 404, 413, 422])
async def test_other_4xx_are_permanent(endpoint: Endpoint, hook: Sink, code: int) -> None:
    endpoint.replies.append(Reply(code))
    attempt = await hook.deliver(event())
    assert not attempt.ok and attempt.permanent and not attempt.gone and attempt.code == code
    assert attempt.error == f"HTTP {code}"


async def test_a_redirect_is_permanent_and_not_followed(endpoint: Endpoint, hook: Sink) -> None:
    endpoint.replies.append(Reply(302, {"location": endpoint.url + "/elsewhere"}))
    attempt = await hook.deliver(event())
    assert not attempt.ok and attempt.permanent and attempt.code == 302
    assert attempt.error is not None and "redirect" in attempt.error
    assert [r.target for r in endpoint.requests] == ["/hooks/in"]


async def test_a_large_response_body_is_not_read_whole(endpoint: Endpoint, hook: Sink) -> None:
    endpoint.replies.append(Reply(200, body=b"x" * 5_000_000))
    assert (await hook.deliver(event())).ok


async def test_connection_refused_names_no_secret() -> None:
    url = f"http://hookuser:hookpassword1@127.0.0.1:{free_port()}/in?token=SECRETTOKEN42"
    (sink,) = webhook_sinks(url)
    await sink.start()
    try:
        attempt = await sink.deliver(event())
    finally:
        await sink.close()
    assert not attempt.ok and not attempt.permanent and attempt.code is None
    assert attempt.error is not None and attempt.error.startswith("connect error")
    for secret in ("SECRETTOKEN42", "hookpassword1", "token=", SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in attempt.error
        assert secret not in sink.name and secret not in sink.display and secret not in repr(sink)


async def test_a_timeout_is_a_failed_attempt(endpoint: Endpoint) -> None:
    (sink,) = webhook_sinks(endpoint.url + "/slow", FLUXHOOK_FORWARD_TIMEOUT="0.3")
    endpoint.replies.append(Reply(hang=True))
    await sink.start()
    try:
        attempt = await sink.deliver(event())
        assert not attempt.ok and not attempt.permanent and attempt.error is not None and "timeout" in attempt.error
        assert (await sink.deliver(event())).ok  # the next attempt works on a fresh connection
    finally:
        await sink.close()


async def test_a_passed_client_is_used_and_not_closed(endpoint: Endpoint) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        settings = Settings.from_env({"FLUXHOOK_FORWARD_URL": f"{endpoint.url}/a,{endpoint.url}/b",
                                      "FLUXHOOK_FORWARD_SECRET": SECRET})
        sinks = sinks_from_settings(settings, http=http)
        for sink in sinks:
            await sink.start()
        assert all([(await sink.deliver(event())).ok for sink in sinks])
        for sink in sinks:
            await sink.close()
        assert not http.is_closed
    assert sorted(r.target for r in endpoint.requests) == ["/a", "/b"]


async def test_owned_client_is_shared_and_closed_with_the_last_sink(endpoint: Endpoint) -> None:
    a, b = webhook_sinks(f"{endpoint.url}/a,{endpoint.url}/b")
    assert isinstance(a, WebhookSink) and isinstance(b, WebhookSink)
    await a.start()
    await b.start()
    client = a._http.get()
    assert b._http.get() is client
    await a.close()
    assert not client.is_closed
    assert (await b.deliver(event())).ok
    await b.close()
    assert client.is_closed


# -- Redis Streams ------------------------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    client = await require_redis()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def stream(redis_client: Any) -> str:
    return f"fluxhook:test:{uuid.uuid4().hex}"


async def _redis_sink(stream: str, maxlen: int = 1000) -> RedisSink:
    settings = Settings.from_env({"FLUXHOOK_REDIS_URL": REDIS_URL, "FLUXHOOK_REDIS_STREAM": stream,
                                  "FLUXHOOK_REDIS_MAXLEN": str(maxlen)})
    (sink,) = sinks_from_settings(settings)
    assert isinstance(sink, RedisSink)
    await sink.start()
    return sink


async def test_redis_xadd_carries_id_type_and_the_envelope(redis_client: Any, stream: str) -> None:
    sink = await _redis_sink(stream)
    evt = event("job.running", progress=0.5)
    try:
        attempt = await sink.deliver(evt)
        assert attempt.ok and attempt.error is None and attempt.code is None
        ((_entry_id, fields),) = await redis_client.xrange(stream)
        assert set(fields) == {b"id", b"type", b"data"}
        assert fields[b"id"].decode() == evt.id and fields[b"type"].decode() == "job.running"
        assert fields[b"data"] == evt.body() and json.loads(fields[b"data"]) == evt.envelope()
    finally:
        await sink.close()
        await redis_client.delete(stream)


async def test_redis_maxlen_keeps_the_stream_bounded(redis_client: Any, stream: str) -> None:
    sink = await _redis_sink(stream, maxlen=10)
    try:
        for _ in range(600):
            assert (await sink.deliver(event())).ok
        length = await redis_client.xlen(stream)
        # MAXLEN ~ trims whole radix-tree nodes (stream-node-max-entries, 100 by default).
        assert 10 <= length <= 10 + 200
    finally:
        await sink.close()
        await redis_client.delete(stream)


async def test_redis_reconnects_by_itself_after_losing_its_connection(redis_client: Any, stream: str) -> None:
    sink = await _redis_sink(stream)
    try:
        assert (await sink.deliver(event())).ok
        assert sink._client is not None
        own = await sink._client.client_id()  # the pool's one connection (deliveries are sequential)
        assert await redis_client.client_kill_filter(_id=own) == 1
        assert (await sink.deliver(event())).ok
        assert await redis_client.xlen(stream) == 2
    finally:
        await sink.close()
        await redis_client.delete(stream)


async def test_redis_unreachable_start_is_a_sink_error_without_the_password() -> None:
    sink = RedisSink(f"redis://fluxuser:redispassword1@127.0.0.1:{free_port()}/0", "fluxhook:events", 100)
    with pytest.raises(SinkError) as caught:
        await sink.start()
    message = str(caught.value)
    assert "FLUXHOOK_REDIS_URL" in message and "127.0.0.1" in message
    assert "redispassword1" not in message and "fluxuser:" not in message
    attempt = await sink.deliver(event())  # no raise: a failed attempt
    assert not attempt.ok and attempt.error is not None and "redispassword1" not in attempt.error
    await sink.close()


# -- NATS JetStream --------------------------------------------------------------------------------------


@pytest.fixture
async def jetstream() -> AsyncIterator[tuple[Any, str, str]]:
    """(js, stream name, subject) of a fresh test stream, deleted afterwards."""
    nc = await require_nats()
    js = nc.jetstream()
    token = uuid.uuid4().hex[:12]
    name, subject = f"FHTEST_{token}", f"fhtest.{token}.events"
    await js.add_stream(name=name, subjects=[f"fhtest.{token}.>"])
    try:
        yield js, name, subject
    finally:
        await js.delete_stream(name)
        await nc.close()


async def _nats_sink(subject: str) -> NatsSink:
    settings = Settings.from_env({"FLUXHOOK_NATS_URL": NATS_URL, "FLUXHOOK_NATS_SUBJECT": subject})
    (sink,) = sinks_from_settings(settings)
    assert isinstance(sink, NatsSink)
    await sink.start()
    return sink


async def test_nats_publish_is_acked_and_carries_the_msg_id(jetstream: tuple[Any, str, str]) -> None:
    js, name, subject = jetstream
    sink = await _nats_sink(subject)
    evt = event()
    try:
        attempt = await sink.deliver(evt)
        assert attempt.ok and attempt.error is None
    finally:
        await sink.close()
    psub = await js.pull_subscribe(subject, stream=name)
    (msg,) = await psub.fetch(1, timeout=5)
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == evt.id
    assert msg.data == evt.body() and json.loads(msg.data) == evt.envelope()
    await msg.ack()
    await psub.unsubscribe()


async def test_nats_the_same_event_twice_is_stored_once(jetstream: tuple[Any, str, str]) -> None:
    js, name, subject = jetstream
    sink = await _nats_sink(subject)
    evt = event()
    try:
        assert (await sink.deliver(evt)).ok
        assert (await sink.deliver(evt)).ok  # a duplicate ack is a delivery all the same
        assert (await sink.deliver(event())).ok
    finally:
        await sink.close()
    assert (await js.stream_info(name)).state.messages == 2


async def test_nats_reconnects_after_its_connection_is_gone(jetstream: tuple[Any, str, str]) -> None:
    js, name, subject = jetstream
    sink = await _nats_sink(subject)
    try:
        assert sink._nc is not None
        await sink._nc.close()  # as after a server restart: the connection is closed, not retried in the background
        assert (await sink.deliver(event())).ok
    finally:
        await sink.close()
    assert (await js.stream_info(name)).state.messages == 1


async def test_nats_subject_without_a_stream_is_a_helpful_sink_error() -> None:
    nc = await require_nats()
    await nc.close()
    subject = f"fhnostream.{uuid.uuid4().hex[:12]}.events"
    sink = NatsSink(NATS_URL, subject)
    with pytest.raises(SinkError) as caught:
        await sink.start()
    message = str(caught.value)
    assert f"no JetStream stream covers subject '{subject}' (FLUXHOOK_NATS_SUBJECT)" in message
    assert "nats stream add FLUXHOOK --subjects 'fhnostream.>'" in message
    await sink.close()


async def test_nats_unreachable_start_is_a_sink_error_without_the_password() -> None:
    sink = NatsSink(f"nats://natsuser:natspassword1@127.0.0.1:{free_port()}", "fluxhook.events")
    with pytest.raises(SinkError) as caught:
        await sink.start()
    message = str(caught.value)
    assert "FLUXHOOK_NATS_URL" in message and "127.0.0.1" in message and "natspassword1" not in message
    attempt = await sink.deliver(event())
    assert not attempt.ok and attempt.error is not None and "natspassword1" not in attempt.error
    await sink.close()


# -- building sinks from settings --------------------------------------------------------------------------


def test_sinks_from_settings_builds_each_kind_and_shows_no_secret() -> None:
    settings = Settings.from_env({
        "FLUXHOOK_FORWARD_URL": "https://hookuser:hookpass99@example.com/hooks?token=SECRETTOKEN42,"
                                "https://other.example/in",
        "FLUXHOOK_FORWARD_SECRET": SECRET,
        "FLUXHOOK_FORWARD_EVENTS": "job.stored,job.failed",
        "FLUXHOOK_REDIS_URL": "redis://:redispassword1@127.0.0.1:6379/0",
        "FLUXHOOK_NATS_URL": "nats://natsuser:natspassword1@127.0.0.1:4222",
    })
    sinks = sinks_from_settings(settings)
    assert [s.kind for s in sinks] == ["webhook", "webhook", "redis", "nats"]
    assert [s.display for s in sinks] == [
        "https://example.com/…", "https://other.example/…",
        "redis stream fluxhook:events at 127.0.0.1:6379", "nats subject fluxhook.events at 127.0.0.1:4222",
    ]
    assert len({s.name for s in sinks}) == 4
    assert all(s.name.startswith(s.kind + ":") for s in sinks)
    assert sinks[0].types == sinks[1].types == frozenset({"job.stored", "job.failed"})
    assert sinks[2].types == sinks[3].types == frozenset(EVENT_TYPES)
    secrets = ["SECRETTOKEN42", "hookpass99", "hookuser", "redispassword1", "natspassword1", "natsuser",
               SECRET, SECRET.removeprefix("whsec_")]
    for sink in sinks:
        for secret in secrets:
            assert secret not in sink.name and secret not in sink.display and secret not in repr(sink)
    # names are stable: the database keys deliveries by them
    assert [s.name for s in sinks_from_settings(settings)] == [s.name for s in sinks]


def test_no_sinks_configured_is_an_empty_list_and_kinds_are_data() -> None:
    assert sinks_from_settings(Settings.from_env({})) == []
    assert [kind for kind, _ in SINK_KINDS] == ["webhook", "redis", "nats"]
    (hook,) = webhook_sinks("https://example.com/h")
    assert hook.types == TERMINAL_EVENTS


def test_no_part_of_a_webhook_path_is_shown() -> None:
    from submitter.urls import display_url

    for url in ("https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX9",
                "https://hooks.zapier.com/hooks/catch/123456/abcdefg/", "https://example.com/in/s3cr3t-t0ken",
                "https://u:p@example.com:8443/hooks/ghp_shorttoken1?x=1"):
        shown = display_url(url)
        assert shown.endswith("/…") and "/" not in shown.split("://", 1)[1].removesuffix("/…")
        assert not any(part in shown for part in ("T00000000", "catch", "s3cr3t", "ghp_", "u:p", "x=1"))
    assert display_url("https://example.com:8443/") == "https://example.com:8443/"

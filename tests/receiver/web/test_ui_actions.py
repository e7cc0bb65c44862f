"""The /ui actions in-process: retry, cancel (with its confirmation), redeliver, enable a sink; CSRF refusals
(no token, a wrong one, another origin, `Origin: null`); key scopes; callback bodies and delivery attempts."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.engine.jobs import submit
from receiver.engine.sweep import sweep_once
from receiver.web.ui.sessions import SESSION_COOKIE
from submitter.simulator import Faults
from submitter.status import Status
from tests.harness import PUBLIC, harness
from tests.receiver.engine.test_relay import HOOK, SECRET, Endpoint, wire
from tests.receiver.web.test_api import drive
from tests.receiver.web.test_api_operations import Served, SpoiledCdn, create, failed_download
from tests.receiver.web.test_key_scopes import ADMIN, CI, DASH, KEYS, WEB, bearer

pytestmark = pytest.mark.anyio

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@pytest.fixture
async def s(tmp_path: Path) -> AsyncIterator[Served]:
    integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(",".join(KEYS)),
                                       forward_urls=(HOOK,), forward_secret=SECRET)
    box: dict[str, SpoiledCdn] = {}

    class Late(httpx.AsyncBaseTransport):  # the simulator exists only inside the harness
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await box["cdn"].handle_async_request(request)

    async with harness(tmp_path, integrations=integrations, cdn_transport=Late()) as h:
        box["cdn"] = SpoiledCdn(httpx.ASGITransport(h.sim.app))
        yield Served(h, box["cdn"])


def browser(s: Served) -> httpx.AsyncClient:
    """A second client on the same app, as a browser: cookies of its own, no Authorization header."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(s.h.app), base_url=PUBLIC)


@contextlib.asynccontextmanager
async def logged_in(s: Served, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(s) as client:
        answer = await client.post("/ui/login", data={"key": key, "next": "/ui/jobs"}, headers={"origin": PUBLIC})
        assert answer.status_code == 303 and SESSION_COOKIE in client.cookies
        yield client


async def token_of(client: httpx.AsyncClient, job_id: str) -> str:
    page = await client.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200, page.text
    tokens = set(_CSRF.findall(page.text))
    assert len(tokens) == 1, tokens
    return tokens.pop()


async def held_job(s: Served, key: str, prompt: str = "held") -> str:
    """A job of `key` submitted and running at the simulator (its callback is held back)."""
    s.h.sim.add_rule(prompt, Faults(drop=True, runtime=3600))
    answer = await s.h.client.post("/v1/jobs", headers=bearer(key), json={
        "provider": "bfl", "model": "flux-dev", "params": {"prompt": prompt}})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    await sweep_once(s.h.rt)
    return job_id


async def status(s: Served, job_id: str) -> Status:
    job = await s.h.rt.store.get_job(job_id)
    assert job is not None
    return job.status


async def test_cancel_asks_first_then_cancels_and_says_so(s: Served) -> None:
    job_id = await held_job(s, CI)
    async with logged_in(s, ADMIN) as client:
        token = await token_of(client, job_id)
        asked = await client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token}, headers={"origin": PUBLIC})
        assert asked.status_code == 200 and "Yes, cancel the job" in asked.text
        assert await status(s, job_id) == Status.SUBMITTED  # nothing happened yet
        done = await client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token, "confirm": "yes"},
                                 headers={"origin": PUBLIC})
        assert done.status_code == 303 and done.headers["location"] == f"/ui/jobs/{job_id}?done=canceled"
        assert await status(s, job_id) == Status.CANCELED
        page = await client.get(done.headers["location"])
        assert "The job is canceled." in page.text and "Cancel the job" not in page.text
        again = await client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token, "confirm": "yes"})
        assert again.status_code == 303 and again.headers["location"].endswith("?done=canceled")  # idempotent


async def test_retry_downloads_again(s: Served) -> None:
    job_id = await failed_download(s, ADMIN)
    async with logged_in(s, ADMIN) as client:
        token = await token_of(client, job_id)
        assert "Retry the download" in (await client.get(f"/ui/jobs/{job_id}")).text
        answer = await client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": token}, headers={"origin": PUBLIC})
        assert answer.status_code == 303 and "done=retried" in answer.headers["location"]
        assert await status(s, job_id) == Status.SUCCEEDED
        await s.h.settle()
        await sweep_once(s.h.rt)
        assert await status(s, job_id) == Status.STORED
        refused = await client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": token})
        assert refused.headers["location"].endswith("?problem=not_retryable")
        page = await client.get(refused.headers["location"])
        assert "cannot be retried" in page.text


async def stored_with_delivery(s: Served, key: str | None = None) -> tuple[str, Endpoint]:
    """A stored job (of `key`, or of no key) whose job.stored event's first delivery was answered 500."""
    endpoint = Endpoint(script=(500,))
    wire(s.h, {HOOK: endpoint})
    await s.h.rt.relay.register()
    if key is None:
        job_id = (await submit(s.h.rt, "bfl", "flux-dev", {"prompt": "a fox"})).id
        await s.h.settle()
        await sweep_once(s.h.rt)
    else:
        job_id = await create(s.h, key)
        await drive(s.h, job_id)
    assert await status(s, job_id) == Status.STORED
    await s.h.rt.relay.run_once()  # the first attempt answers 500
    return job_id, endpoint


async def test_deliveries_are_shown_to_operator_keys_only(s: Served) -> None:
    job_id, _ = await stored_with_delivery(s, CI)
    async with logged_in(s, CI) as client:  # its own job: the callback, not the operator's sinks
        page = (await client.get(f"/ui/jobs/{job_id}")).text
        assert "callback received" in page and "pipeline.test" not in page and "attempt(s)" not in page
    async with logged_in(s, DASH) as client:
        page = (await client.get(f"/ui/jobs/{job_id}")).text
        assert "pipeline.test" in page and "1 attempt(s)" in page and 'name="event"' not in page


async def test_the_job_page_shows_callback_bodies_and_delivery_attempts(s: Served) -> None:
    job_id, _ = await stored_with_delivery(s)
    async with logged_in(s, ADMIN) as client:
        page = (await client.get(f"/ui/jobs/{job_id}")).text
        assert "Body (as stored, secrets removed)" in page and "1 attempt(s)" in page and "500 in" in page
        body = html.unescape(page)
        assert '"status": "Ready"' in body and '"prompt": "a fox"' in body  # the callback, indented
        assert "sample.png?[redacted]" in body  # as stored: the signed URL's query removed
        assert "hush-hush" not in page and SECRET not in page
    async with logged_in(s, WEB) as client:  # a submit key: not its job
        assert (await client.get(f"/ui/jobs/{job_id}")).status_code == 404


async def test_redeliver_and_enable_a_sink(s: Served) -> None:
    job_id, endpoint = await stored_with_delivery(s)
    rt = s.h.rt
    sink = next(iter(rt.relay.sinks))
    async with logged_in(s, ADMIN) as client:
        token = await token_of(client, job_id)
        event = re.search(r'name="event" value="(evt_[^"]+)"', (await client.get(f"/ui/jobs/{job_id}")).text)
        assert event is not None
        answer = await client.post(f"/ui/jobs/{job_id}/redeliver", data={"csrf": token, "event": event[1]},
                                   headers={"origin": PUBLIC})
        assert answer.status_code == 303 and "done=redelivered" in answer.headers["location"]
        await rt.relay.run_once()
        assert len(endpoint.received) == 2  # the 500, then the redelivery
        unknown = await client.post(f"/ui/jobs/{job_id}/redeliver", data={"csrf": token, "event": "evt_nope"})
        assert unknown.headers["location"].endswith("?problem=no_event")

        assert await rt.store.disable_sink(sink, "410 Gone", now=s.h.clock())
        page = (await client.get(f"/ui/jobs/{job_id}")).text
        assert "(sink disabled)" in page and "again</button>" in page
        answer = await client.post("/ui/sinks/enable", data={"csrf": token, "sink": sink, "job": job_id},
                                   headers={"origin": PUBLIC})
        assert answer.status_code == 303 and answer.headers["location"] == f"/ui/jobs/{job_id}?done=enabled"
        assert all(x.disabled_at is None for x in await rt.store.sinks())
        missing = await client.post("/ui/sinks/enable", data={"csrf": token, "sink": "nope", "job": job_id})
        assert missing.headers["location"].endswith("?problem=no_sink")


async def test_csrf_refusals(s: Served) -> None:
    job_id = await held_job(s, ADMIN)
    async with logged_in(s, ADMIN) as client, logged_in(s, ADMIN) as other:
        token = await token_of(client, job_id)
        other_token = await token_of(other, job_id)
        assert token != other_token  # per session
        form = {"confirm": "yes"}
        cases = [
            ({}, {"origin": PUBLIC}),  # no token
            ({"csrf": "0" * 64}, {"origin": PUBLIC}),  # a wrong one
            ({"csrf": other_token}, {"origin": PUBLIC}),  # another session's
            ({"csrf": token}, {"origin": "https://evil.example"}),  # another origin
            ({"csrf": token}, {"origin": "null"}),  # a sandboxed frame, a data: page
        ]
        for extra, headers in cases:
            for path in (f"/ui/jobs/{job_id}/cancel", f"/ui/jobs/{job_id}/retry", f"/ui/jobs/{job_id}/redeliver"):
                answer = await client.post(path, data={**form, **extra}, headers=headers)
                assert answer.status_code == 403, (path, extra, headers)
            answer = await client.post("/ui/sinks/enable", data={"sink": "x", "job": job_id, **extra},
                                       headers=headers)
            assert answer.status_code == 403, (extra, headers)
        stuffed = "&".join(f"f{i}=x" for i in range(20))
        answer = await client.post(f"/ui/jobs/{job_id}/cancel", content=stuffed, headers={
            "origin": PUBLIC, "content-type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 400
        assert (await client.post(f"/ui/jobs/{job_id}/cancel", content="x" * 5000)).status_code == 413
        assert await status(s, job_id) == Status.SUBMITTED
    # Bearer: no token needed, but a foreign Origin is refused all the same.
    answer = await s.h.client.post(f"/ui/jobs/{job_id}/cancel", data=form,
                                   headers={**bearer(ADMIN), "origin": "https://evil.example"})
    assert answer.status_code == 403
    answer = await s.h.client.post(f"/ui/jobs/{job_id}/cancel", data=form, headers=bearer(ADMIN))
    assert answer.status_code == 303 and await status(s, job_id) == Status.CANCELED


async def test_scopes(s: Served) -> None:
    mine, theirs = await held_job(s, CI, "mine"), await held_job(s, WEB, "theirs")
    async with logged_in(s, DASH) as client:  # read: no forms, and acts on nothing
        page = (await client.get(f"/ui/jobs/{mine}")).text
        assert "Cancel the job" not in page and 'name="csrf"' not in page
    for path in (f"/ui/jobs/{mine}/cancel", f"/ui/jobs/{mine}/retry"):  # Bearer: no token needed, scope checked
        answer = await s.h.client.post(path, data={"confirm": "yes"}, headers=bearer(DASH))
        assert answer.status_code == 403 and "may only read" in answer.text and DASH not in answer.text
    async with logged_in(s, CI) as client:  # submit: its own jobs only, no sink actions
        token = await token_of(client, mine)
        assert 'name="event"' not in (await client.get(f"/ui/jobs/{mine}")).text
        answer = await client.post(f"/ui/jobs/{theirs}/cancel", data={"csrf": token, "confirm": "yes"})
        assert answer.status_code == 404
        for path, data in ((f"/ui/jobs/{mine}/redeliver", {"event": "evt_x"}),
                           ("/ui/sinks/enable", {"sink": "x", "job": mine})):
            answer = await client.post(path, data={"csrf": token, **data})
            assert answer.status_code == 403 and "admin" in answer.text, path
        answer = await client.post(f"/ui/jobs/{mine}/cancel", data={"csrf": token, "confirm": "yes"})
        assert answer.status_code == 303 and await status(s, mine) == Status.CANCELED
    assert await status(s, theirs) == Status.SUBMITTED

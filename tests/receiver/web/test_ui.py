"""The /ui pages in-process (httpx ASGITransport) with the simulator: auth, off, filters, escaping."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config.integrations import Integrations
from receiver.config.keys import parse_api_keys
from receiver.engine.sweep import sweep_once
from receiver.store import StoreUnavailable
from receiver.web.ui.gallery import _frames
from receiver.web.ui.pages import PAGE_HEADERS
from receiver.web.ui.providers import percentile
from receiver.web.ui.sessions import SESSION_COOKIE, SESSION_MAX_AGE
from submitter.simulator import Faults
from submitter.status import Status
from tests.harness import Harness, harness

pytestmark = pytest.mark.anyio

KEY = "ui-key-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@contextlib.asynccontextmanager
async def ui_harness(tmp_path: Path, keys: tuple[str, ...] = (KEY,)) -> AsyncIterator[Harness]:
    integrations = dataclasses.replace(Integrations(), api_keys=parse_api_keys(",".join(keys)))
    async with harness(tmp_path, integrations=integrations) as h:
        yield h


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with ui_harness(tmp_path) as harnessed:
        yield harnessed


async def make_job(h: Harness, until: Status = Status.STORED, **body: Any) -> str:
    """A job through the API, driven by sweeps and the simulator's callbacks until `until` (stored, or
    submitted: its prompt is held by the simulator)."""
    if until != Status.STORED:
        h.sim.add_rule(body.get("params", {}).get("prompt", "a fox"), Faults(drop=True, runtime=3600))
    answer = await h.client.post("/v1/jobs", headers=AUTH, json={
        "provider": "bfl", "model": "flux-dev", "params": {"prompt": "a fox"}, **body})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    for _ in range(6):
        await sweep_once(h.rt)
        await h.settle()
        job = await h.rt.store.get_job(job_id)
        assert job is not None
        if job.status == until:
            return job_id
        assert job.status not in (Status.STORED, Status.FAILED), job.status
        h.clock.advance(h.settings.poll_after)
    raise AssertionError(f"{job_id} stuck in {job.status}")


async def login(h: Harness) -> httpx.Response:
    return await h.client.post("/ui/login", data={"key": KEY, "next": "/ui/jobs"})


async def test_off_without_keys(tmp_path: Path) -> None:
    async with ui_harness(tmp_path, keys=()) as h:
        for path in ("/ui", "/ui/login", "/ui/jobs", "/ui/jobs/fh_x", "/ui/jobs/fh_x/files/0", "/ui/providers",
                     "/ui/events"):
            answer = await h.client.get(path, headers=AUTH)
            assert answer.status_code == 404, path
        assert (await h.client.post("/ui/login", data={"key": KEY})).status_code == 404


async def test_pages_need_a_key_or_a_session(h: Harness) -> None:
    answer = await h.client.get("/ui/jobs?status=stored")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstatus%3Dstored"
    assert (await h.client.get("/ui", headers={"authorization": "Bearer wrong-key-0123456789"})).status_code == 401
    for path in ("/ui/jobs/fh_x/files/0", "/ui/events"):
        assert (await h.client.get(path)).status_code == 401
    assert (await h.client.get("/ui", headers=AUTH)).status_code == 200
    form = await h.client.get("/ui/login")
    assert form.status_code == 200 and '<label for="key">' in form.text


async def test_login_sets_a_signed_session_cookie(h: Harness) -> None:
    bad = await h.client.post("/ui/login", data={"key": "not-the-key-0123456789"})
    assert bad.status_code == 401 and "not valid" in bad.text and SESSION_COOKIE not in bad.cookies
    answer = await login(h)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/jobs"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie and "Path=/ui" in cookie
    value = h.client.cookies[SESSION_COOKIE]
    assert KEY not in value and re.fullmatch(r"[0-9]+\.[0-9a-f]{16}\.[0-9a-f]{64}", value)
    assert (await h.client.get("/ui")).status_code == 200
    stream = await h.client.head("/ui/events")
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    # Tampered, or expired: back to the login form.
    issued, nonce, mac = value.split(".")
    h.client.cookies.set(SESSION_COOKIE, f"{issued}.{nonce}.{'0' * 64}", path="/ui")
    assert (await h.client.get("/ui")).status_code == 303
    h.client.cookies.set(SESSION_COOKIE, f"{int(issued) - 1}.{nonce}.{mac}", path="/ui")
    assert (await h.client.get("/ui")).status_code == 303
    other = "0123456789abcdef" if nonce != "0123456789abcdef" else "fedcba9876543210"
    h.client.cookies.set(SESSION_COOKIE, f"{issued}.{other}.{mac}", path="/ui")
    assert (await h.client.get("/ui")).status_code == 303
    h.client.cookies.set(SESSION_COOKIE, value, path="/ui")
    assert (await h.client.get("/ui")).status_code == 200
    h.clock.advance(SESSION_MAX_AGE + 1)
    assert (await h.client.get("/ui")).status_code == 303
    # Logging out forgets the cookie.
    h.client.cookies.clear()
    await login(h)
    assert (await h.client.get("/ui")).status_code == 200
    out = await h.client.post("/ui/logout")
    assert out.status_code == 303 and SESSION_COOKIE not in h.client.cookies


async def test_a_removed_key_ends_its_sessions(tmp_path: Path) -> None:
    async with ui_harness(tmp_path) as h:
        await login(h)
        assert (await h.client.get("/ui")).status_code == 200
        h.rt.settings = dataclasses.replace(h.rt.settings, integrations=dataclasses.replace(
            h.rt.settings.integrations, api_keys=parse_api_keys("another-key-0123456789")))
        assert (await h.client.get("/ui")).status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "/v1/jobs"])
async def test_login_never_redirects_elsewhere(h: Harness, target: str) -> None:
    answer = await h.client.post("/ui/login", data={"key": KEY, "next": target})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://hooks.test"])
async def test_cross_origin_login_is_refused(h: Harness, origin: str) -> None:
    """Another site, a sandboxed frame or a data: page (`Origin: null`), another scheme: no session."""
    answer = await h.client.post("/ui/login", data={"key": KEY}, headers={"origin": origin})
    assert answer.status_code == 403 and SESSION_COOKIE not in h.client.cookies
    same = await h.client.post("/ui/login", data={"key": KEY}, headers={"origin": "https://hooks.test"})
    assert same.status_code == 303 and SESSION_COOKIE in h.client.cookies


async def test_pages_send_their_origin_on_a_post() -> None:
    """`no-referrer` would make a browser send `Origin: null` with the login form, which is refused."""
    assert PAGE_HEADERS["referrer-policy"] == "same-origin"


async def test_logout_ends_the_session_even_for_a_copied_cookie(h: Harness) -> None:
    await login(h)
    copied = h.client.cookies[SESSION_COOKIE]
    assert (await h.client.get("/ui")).status_code == 200
    assert (await h.client.post("/ui/logout")).status_code == 303
    h.client.cookies.set(SESSION_COOKIE, copied, path="/ui")
    assert (await h.client.get("/ui")).status_code == 303  # back to the login form
    for respelled in ("0" + copied, "00" + copied):  # the same issue time, written another way: still ended
        h.client.cookies.set(SESSION_COOKIE, respelled, path="/ui")
        assert (await h.client.get("/ui")).status_code == 303
        assert (await h.client.get("/ui/events")).status_code == 401
    h.client.cookies.set(SESSION_COOKIE, copied, path="/ui")
    assert (await h.client.get("/ui/jobs/fh_x/files/0")).status_code == 401
    # two logins of the same key in the same second: ending one leaves the other
    h.client.cookies.clear()
    await login(h)
    first = h.client.cookies[SESSION_COOKIE]
    h.client.cookies.clear()
    await login(h)
    second = h.client.cookies[SESSION_COOKIE]
    assert first != second
    h.client.cookies.clear()
    h.client.cookies.set(SESSION_COOKIE, first, path="/ui")
    assert (await h.client.post("/ui/logout")).status_code == 303
    h.client.cookies.set(SESSION_COOKIE, second, path="/ui")
    assert (await h.client.get("/ui")).status_code == 200


async def test_a_logout_the_ledger_cannot_record_says_so(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    await login(h)

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(h.rt.store, "end_session", down)
    answer = await h.client.post("/ui/logout")
    assert answer.status_code == 503 and "could not be ended" in answer.text


async def test_gallery_shows_stored_images_newest_first(h: Harness) -> None:
    first = await make_job(h)
    h.clock.advance(10)
    second = await make_job(h, params={"prompt": "an owl"})
    await make_job(h, until=Status.SUBMITTED, params={"prompt": "not yet"})
    await login(h)
    page = await h.client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    srcs = re.findall(r'<img src="([^"]+)" alt="([^"]*)"', page.text)
    assert srcs == [(f"/ui/jobs/{second}/files/0", "an owl"), (f"/ui/jobs/{first}/files/0", "a fox")]
    assert "not yet" not in page.text and 'src="/ui/static/gallery.js"' in page.text
    image = await h.client.get(srcs[0][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert (await h.client.get(f"/ui/jobs/{first}/files/7")).status_code == 404
    assert (await h.client.get("/ui/jobs/fh_nope/files/0")).status_code == 404
    css = await h.client.get("/ui/static/ui.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", page.text)


async def test_job_table_filters_and_search(h: Harness) -> None:
    stored = await make_job(h)
    submitted = await make_job(h, until=Status.SUBMITTED, provider="deerapi", model="flux-pro-1.1",
                               params={"prompt": "held"})
    await login(h)

    async def ids(query: str) -> set[str]:
        page = await h.client.get(f"/ui/jobs{query}")
        return set(re.findall(r'<th scope="row"><a href="/ui/jobs/([^"]+)">', page.text))

    assert await ids("") == {stored, submitted}
    assert await ids("?status=stored") == {stored}
    assert await ids("?provider=deerapi") == {submitted}
    assert await ids("?status=stored&provider=deerapi") == set()
    assert await ids(f"?q={submitted}") == {submitted}
    assert await ids(f"?q={submitted}&status=stored") == set()
    assert await ids("?q=fh_nope") == set()
    bad = await h.client.get("/ui/jobs?status=bogus")
    assert bad.status_code == 422 and "unknown status" in bad.text
    page = await h.client.get("/ui/jobs?status=stored")
    assert '<option value="stored" selected>' in page.text


async def test_job_table_pages_by_keyset(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    import receiver.web.ui.jobs as ui_jobs

    monkeypatch.setattr(ui_jobs, "PAGE_SIZE", 2)
    made = []
    for _ in range(3):
        made.append(await make_job(h, until=Status.SUBMITTED, params={"prompt": "held"}))
        h.clock.advance(1)
    await login(h)
    page = await h.client.get("/ui/jobs")
    older = re.search(r'<a href="([^"]+)" rel="next">', page.text)
    assert older is not None
    rest = await h.client.get(older[1].replace("&amp;", "&"))
    assert re.findall(r'<th scope="row"><a href="/ui/jobs/([^"]+)">', rest.text) == [made[0]]


async def test_job_page_shows_the_timeline(h: Harness) -> None:
    job_id = await make_job(h)
    await login(h)
    page = await h.client.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200
    timeline = page.text.split('<ol id="timeline"', 1)[1]
    expected = ["created", "submitted", "callback received", "event job.submitted", "event job.stored"]
    if not await h.rt.store.events_after(0, job_id=job_id, types=frozenset({"job.submitted"})):
        # The simulator's callback beat the submit answer: the job went queued -> succeeded, never `submitted`.
        expected.remove("event job.submitted")
    order = [w for w in expected if w in timeline]
    assert order == expected
    assert "verdict: accepted" in timeline
    assert f'src="/ui/jobs/{job_id}/files/0"' in page.text
    assert (await h.client.get("/ui/jobs/fh_nope")).status_code == 404
    assert (await h.client.get("/ui/jobs/%3Cscript%3E")).status_code == 404


async def test_provider_panel_counts_callbacks_and_polls(h: Harness) -> None:
    await make_job(h)
    await login(h)
    page = await h.client.get("/ui/providers")
    assert page.status_code == 200
    row = re.search(r'<th scope="row">bfl</th><td>last hour</td><td>(\d+)</td><td>(\d+)</td>\s*<td>(\d+)</td>'
                    r'<td>(\d+)</td><td>(\d+)</td>', page.text)
    assert row is not None and row.groups() == ("1", "1", "0", "1", "0")
    assert '<th scope="row">deerapi</th>' not in page.text  # providers with no jobs are not shown


async def test_user_data_is_escaped_everywhere(h: Harness) -> None:
    job_id = await make_job(h, params={"prompt": EVIL}, metadata={"note": EVIL, EVIL: 1})
    await login(h)
    for path in ("/ui", "/ui/jobs", f"/ui/jobs/{job_id}", f"/ui/jobs?q={EVIL}"):
        page = await h.client.get(path)
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
    page = await h.client.get(f"/ui/jobs/{job_id}")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    assert "<script" not in page.text  # the job page has no script at all


async def test_live_frames_carry_the_new_images(h: Harness) -> None:
    head = await h.rt.feed.head()
    job_id = await make_job(h, params={"prompt": EVIL})
    frames = _frames(h.rt, head)
    try:
        assert await anext(frames) == "retry: 2000\n\n"
        frame = await anext(frames)
    finally:
        await frames.aclose()
    assert frame.startswith("id: ") and "event: job.stored\n" in frame
    assert f'"src":"/ui/jobs/{job_id}/files/0"' in frame and f'"href":"/ui/jobs/{job_id}"' in frame


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 50) == 50.0
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0
    assert percentile([1.0, 2.0], 50) == 1.0

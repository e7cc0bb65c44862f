"""Events a consumer can use without an API key (issue 21, item 5): the prompt in the event's data, and per
file a `link` signed when each attempt is sent: a signed link to this receiver for local results (fetched
here through the app), a presigned URL for S3 (moto on loopback). A manual clock, no sleeps."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config.env import SettingsError
from receiver.config.integrations import Integrations
from receiver.engine.jobs import submit
from receiver.engine.links import EventLinks
from receiver.engine.sweep import sweep_once
from receiver.store import iso
from receiver.store.sql.outbox import PROMPT_LIMIT
from receiver.web.api.models import EventEnvelope
from submitter.status import Status
from tests.harness import PUBLIC, Harness, harness, make_settings
from tests.receiver.engine.test_relay import HOOK, SECRET, Endpoint, wire
from tests.receiver.results.test_results import BUCKET, aws_env, s3_endpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio


def linked(tmp_path: Path, ttl: float = 86400.0, **kw: Any) -> Any:
    base = make_settings(tmp_path).integrations
    integrations = dataclasses.replace(base, forward_urls=(HOOK,), forward_secret=SECRET, event_link_ttl=ttl)
    return harness(tmp_path, integrations=integrations, **kw)


async def stored(h: Harness, prompt: str = "a fox") -> str:
    await h.rt.relay.register()
    job = await submit(h.rt, "bfl", "flux-dev", {"prompt": prompt})
    await h.settle()
    await sweep_once(h.rt)  # stores the file, then the relay pass delivers job.stored
    found = await h.rt.store.get_job(job.id)
    assert found is not None and found.status == Status.STORED
    return job.id


async def test_a_delivered_event_carries_the_prompt_and_a_link_that_works_without_a_key(tmp_path: Path) -> None:
    async with linked(tmp_path) as h:
        endpoint = Endpoint()
        wire(h, {HOOK: endpoint})
        job_id = await stored(h)
        [body] = endpoint.bodies()
        assert body["data"]["prompt"] == "a fox" and body["data"]["prompt_truncated"] is False
        assert EventEnvelope.model_validate(body).data.files[0].link is not None  # what /openapi.json documents
        [file] = body["data"]["files"]
        assert file["link"].startswith(f"{PUBLIC}/files/{job_id}/0?expires={int(h.clock.now + 86400)}&sig=")
        assert file["link_expires_at"] == iso(int(h.clock.now + 86400))
        got = await h.client.get(file["link"])  # no Authorization header
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert hashlib.sha256(got.content).hexdigest() == file["sha256"]
        assert "no-store" not in got.headers["cache-control"]

        forged = file["link"][:-1] + ("A" if file["link"][-1] != "A" else "B")
        refused = await h.client.get(forged)
        assert refused.status_code == 403 and "bad signature" in refused.text
        other = await h.client.get(file["link"].replace(f"/{job_id}/0?", f"/{job_id}/1?"))
        assert other.status_code == 403
        assert (await h.client.get(f"/files/{job_id}/0")).status_code == 403  # no signature at all
        h.clock.advance(86400)
        expired = await h.client.get(file["link"])
        assert expired.status_code == 403 and "expired" in expired.text
        assert f"/v1/jobs/{job_id}/files/0" in expired.text  # how to get a fresh one
        assert h.settings.secret_key is not None and h.settings.secret_key.decode() not in file["link"]


async def test_a_retry_hours_later_carries_a_link_signed_at_that_attempt(tmp_path: Path) -> None:
    async with linked(tmp_path, ttl=3600) as h:
        endpoint = Endpoint((503,))
        wire(h, {HOOK: endpoint})
        await stored(h)
        [pending] = await h.rt.store.deliveries("pending")
        assert pending.next_at is not None
        h.clock.now = pending.next_at + 5 * 3600  # the endpoint came back five hours later
        await h.rt.relay.run_once()
        first, second = ([f["link"] for f in b["data"]["files"]] for b in endpoint.bodies())
        assert (await h.client.get(first[0])).status_code == 403  # signed at the first attempt: expired by now
        assert (await h.client.get(second[0])).status_code == 200  # signed at the retry: works for the next hour


async def test_a_long_prompt_is_cut_and_says_so(tmp_path: Path) -> None:
    async with linked(tmp_path) as h:
        endpoint = Endpoint()
        wire(h, {HOOK: endpoint})
        await stored(h, prompt="x" * (PROMPT_LIMIT + 1))
        [body] = endpoint.bodies()
        assert body["data"]["prompt"] == "x" * PROMPT_LIMIT and body["data"]["prompt_truncated"] is True


async def test_without_a_public_url_local_files_get_a_null_link(tmp_path: Path) -> None:
    async with linked(tmp_path) as h:
        endpoint = Endpoint()
        relay = wire(h, {HOOK: endpoint})
        relay.links = EventLinks(results=h.rt.results, store=h.rt.store, clock=h.clock, ttl=60, public_url=None,
                                 secret_key=h.settings.secret_key).add
        await stored(h)
        [body] = endpoint.bodies()
        [file] = body["data"]["files"]
        assert file["link"] is None and file["link_expires_at"] is None and file["url"].startswith("/v1/jobs/")


async def test_an_s3_result_gets_a_presigned_link_in_the_event(
    tmp_path: Path, s3_endpoint: str, aws_env: None,  # noqa: F811
) -> None:
    url = f"s3://{BUCKET}/links-{os.urandom(4).hex()}/results"
    async with linked(tmp_path, results_url=url, s3_endpoint=s3_endpoint) as h:
        endpoint = Endpoint()
        wire(h, {HOOK: endpoint})
        await stored(h)
        [body] = endpoint.bodies()
        [file] = body["data"]["files"]
        assert file["location"].startswith(f"{url}/")
        assert file["link"].startswith(f"{s3_endpoint}/{BUCKET}/") and "X-Amz-Expires=86400" in file["link"]
        async with httpx.AsyncClient() as plain:  # no credentials: the signature in the URL is all it takes
            got = await plain.get(file["link"])
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == file["sha256"]


def test_the_link_lifetime_is_a_setting_bounded_by_seven_days() -> None:
    assert Integrations.from_env({}).event_link_ttl == 86400
    assert Integrations.from_env({"FLUXHOOK_EVENT_LINK_TTL": "3600"}).event_link_ttl == 3600
    with pytest.raises(SettingsError, match="FLUXHOOK_EVENT_LINK_TTL must be at most 604800"):
        Integrations.from_env({"FLUXHOOK_EVENT_LINK_TTL": "604801"})


async def test_a_link_in_a_log_line_loses_its_signature(tmp_path: Path) -> None:
    async with linked(tmp_path) as h:
        endpoint = Endpoint()
        wire(h, {HOOK: endpoint})
        await stored(h)
        link = endpoint.bodies()[0]["data"]["files"][0]["link"]
        sig = link.rpartition("sig=")[2]
        shown = h.rt.redactor.scrub(f"could not fetch {link}")
        assert shown is not None and sig not in shown and "/files/" in shown

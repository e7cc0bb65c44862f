"""The Lambda handler (receiver.serve.aws_lambda) with real event documents, on PostgreSQL with the
simulator as provider; and `POST /v1/sweep` in-process.

The handler is synchronous and runs its own event loop (as on Lambda), so the async tests call it
from a thread; the simulator is served on the test's loop over loopback meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.config.settings import Settings
from receiver.engine.jobs import callback_url, submit
from receiver.engine.runtime import Runtime
from receiver.serve import aws_lambda as serverless
from receiver.serve.background import serve_in_background
from receiver.store import open_store
from submitter.signing import sign_bfl
from submitter.simulator import Faults, Simulator
from submitter.status import Status
from tests.e2e.support import MASTER, env_for
from tests.harness import harness
from tests.pg import fresh_schema
from tests.receiver.results.test_results import BUCKET, aws_env, s3_endpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio

PUBLIC = "https://abcdefgh.lambda-url.eu-west-1.on.aws"
TOKEN = "sweep-token-0123456789abcdef0123456789"
#: FLUXHOOK_METRICS_TOKEN, as deploy/lambda/template.yaml sets it: /healthz shows its counters with it.
OPS_TOKEN = "metrics-token-0123456789"
SCHEDULED = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-12-01T08:00:00Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:events:eu-west-1:123456789012:rule/fluxhook-sweep"],
    "detail": {},
}


def http_v2_event(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                  *, base64_body: bool = True) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) / Lambda function URL event, as AWS sends it."""
    host = PUBLIC.removeprefix("https://")
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": host, "user-agent": "python-httpx", "x-forwarded-proto": "https",
                    "x-forwarded-for": "203.0.113.7", "x-forwarded-port": "443",
                    **({"content-type": "application/json"} if body else {}), **(headers or {})},
        "requestContext": {
            "accountId": "anonymous", "apiId": "abcdefgh", "domainName": host, "domainPrefix": "abcdefgh",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7",
                     "userAgent": "python-httpx"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "routeKey": "$default", "stage": "$default",
            "time": "01/Dec/2026:08:00:00 +0000", "timeEpoch": 1796112000000,
        },
        "body": (base64.b64encode(body).decode() if base64_body else body.decode()) if body else None,
        "isBase64Encoded": base64_body and bool(body),
    }


def rest_v1_event(method: str, path: str) -> dict[str, Any]:
    """An API Gateway REST API (payload 1.0) proxy event."""
    return {
        "resource": "/{proxy+}", "path": path, "httpMethod": method,
        "headers": {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", "X-Forwarded-Proto": "https"},
        "multiValueHeaders": {"Host": ["abc123.execute-api.eu-west-1.amazonaws.com"],
                              "X-Forwarded-Proto": ["https"]},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")}, "stageVariables": None,
        "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": method, "path": f"/prod{path}",
                           "stage": "prod", "requestId": "r-1", "identity": {"sourceIp": "203.0.113.7"}},
        "body": None, "isBase64Encoded": False,
    }


async def invoke(event: dict[str, Any]) -> Any:
    return await asyncio.to_thread(serverless.handler, event, None)


@dataclass
class Lambda:
    settings: Settings
    sim: Simulator
    sim_url: str
    rt: Runtime  # the submitting side (`fluxhook submit`), on the same database


@contextlib.asynccontextmanager
async def lambda_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, migrate: bool = True, extra: dict[str, str] | None = None,
) -> AsyncIterator[Lambda]:
    # Callbacks are dropped: the tests deliver them through the handler themselves.
    sim = Simulator(default_faults=Faults(runtime=0.05, drop=True), callback_retries=())
    async with fresh_schema() as url, serve_in_background(sim.app) as sim_url:
        env = env_for(tmp_path, sim_url, PUBLIC, db=url) | (extra or {})
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env(env)
        store = open_store(url, pool_size=2)
        await store.open(migrate=migrate)
        try:
            async with Runtime.open(settings, store=store) as rt:
                yield Lambda(settings, sim, sim_url, rt)
        finally:
            await asyncio.to_thread(serverless.reset)
            await store.close()
            await sim.aclose()


async def ready_result(env: Lambda, provider_job_id: str) -> bytes:
    """The simulator's finished BFL result: exactly what its callback would have carried."""
    async with httpx.AsyncClient(base_url=env.sim_url) as http:
        async with asyncio.timeout(10):
            while True:
                answer = await http.get("/v1/get_result", params={"id": provider_job_id}, headers={"x-key": "k"})
                if answer.json()["status"] == "Ready":
                    return answer.content
                await asyncio.sleep(0.02)


@pytest.mark.parametrize("base64_body", [True, False])
async def test_signed_callback_through_a_function_url_event_then_the_scheduled_sweep_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base64_body: bool
) -> None:
    async with lambda_env(tmp_path, monkeypatch, extra={"FLUXHOOK_METRICS_TOKEN": OPS_TOKEN}) as env:
        job = await submit(env.rt, "bfl", "flux-dev", {"prompt": "a lambda fox"})
        assert job.status == Status.SUBMITTED and job.provider_job_id
        body = await ready_result(env, job.provider_job_id)
        url, secret = callback_url(PUBLIC, MASTER.encode(), "bfl", job.id)
        event = http_v2_event("POST", url.removeprefix(PUBLIC), body, {"x-bfl-signature": sign_bfl(secret, body)},
                              base64_body=base64_body)

        answer = await invoke(event)
        assert answer["statusCode"] == 200, answer
        assert json.loads(answer["body"]) == {"ok": True, "status": "succeeded"}
        # The same callback again, on the same warm instance: a duplicate, nothing twice.
        again = await invoke(event)
        assert again["statusCode"] == 200 and json.loads(again["body"])["ok"] is True
        after = await env.rt.store.get_job(job.id)
        assert after is not None and after.status == Status.SUCCEEDED
        assert not (env.settings.results / job.id).exists()  # no background worker in Lambda

        # A forged signature is refused in the API Gateway response shape.
        forged = http_v2_event("POST", url.removeprefix(PUBLIC), body, {"x-bfl-signature": sign_bfl("guess", body)})
        assert (await invoke(forged))["statusCode"] == 401

        report = await invoke(SCHEDULED)
        assert isinstance(report, dict) and "claimed" in report and all(isinstance(v, int) for v in report.values())
        done = await env.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED, (done, report)
        (stored,) = sorted((env.settings.results / job.id).iterdir())
        assert stored.read_bytes().startswith(b"\x89PNG")
        assert json.loads((await invoke(http_v2_event("GET", "/healthz")))["body"]) == {"ok": True}
        health = await invoke(http_v2_event("GET", "/healthz", headers={"authorization": f"Bearer {OPS_TOKEN}"}))
        assert json.loads(health["body"])["callbacks"] == {"accepted": 1, "duplicate": 1, "rejected": 1}


async def test_scheduled_event_sweeps_a_job_whose_callback_never_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lambda_env(tmp_path, monkeypatch) as env:
        job = await submit(env.rt, "deerapi", "flux-pro-1.1", {"prompt": "no callback"})
        await ready_result(env, job.provider_job_id or "")
        reports = []
        async with asyncio.timeout(20):
            while (current := await env.rt.store.get_job(job.id)) is not None and current.status != Status.STORED:
                reports.append(await invoke(SCHEDULED))
                await asyncio.sleep(0.1)  # FLUXHOOK_POLL_AFTER=0.5: the first poll is due shortly
        assert all(isinstance(r, dict) and "claimed" in r for r in reports)
        assert sum(r["claimed"] for r in reports) >= 1
        assert current is not None and current.polls >= 1 and current.callback_at is None
        assert len(list((env.settings.results / job.id).iterdir())) == 1


async def test_rest_v1_event_is_served_and_the_runtime_is_opened_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lambda_env(tmp_path, monkeypatch):
        first = await invoke(rest_v1_event("GET", "/healthz"))
        assert first["statusCode"] == 200 and json.loads(first["body"])["ok"] is True
        instance = serverless._instance
        assert instance is not None and instance.runtime is not None
        runtime = instance.runtime
        await invoke(http_v2_event("GET", "/healthz"))
        await invoke(SCHEDULED)
        assert serverless._instance is instance and instance.runtime is runtime  # warm: reused, not reopened


async def test_schema_not_current_is_a_clear_503_and_nothing_is_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with lambda_env(tmp_path, monkeypatch, migrate=False) as env:
        answer = await invoke(http_v2_event("GET", "/healthz"))
        assert answer["statusCode"] == 503
        assert "fluxhook migrate" in json.loads(answer["body"])["error"]
        with pytest.raises(Exception, match="fluxhook migrate"):
            await invoke(SCHEDULED)
        assert serverless._instance is None  # a failed start is not kept
        _, pending = await env.rt.store.migrate(apply=False)
        assert pending  # still not migrated: that is the deploy step's job
        await env.rt.store.migrate()
        healthy = await invoke(http_v2_event("GET", "/healthz"))  # the next invocation starts fine
        assert healthy["statusCode"] == 200


async def test_unreachable_database_is_503_and_the_next_event_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_for(tmp_path, "http://127.0.0.1:9", PUBLIC, db="postgresql://postgres@127.0.0.1:9/test")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        answer = await invoke(http_v2_event("GET", "/healthz"))
        assert answer["statusCode"] == 503 and answer["headers"]["retry-after"] == "5"
        assert json.loads(answer["body"]) == {"error": "store unavailable, retry later"}
        assert serverless._instance is None
        with pytest.raises(Exception, match="cannot open the database"):
            await invoke(SCHEDULED)
    finally:
        await asyncio.to_thread(serverless.reset)


def test_importing_the_handler_opens_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, receiver.serve.aws_lambda as s; assert s._instance is None;"
            " assert 'asyncpg' not in sys.modules and 'receiver.web.app' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3],
                   env={"PATH": "", "FLUXHOOK_DB": str(tmp_path / "absent" / "x.db")})


def test_is_scheduled_tells_events_apart() -> None:
    assert serverless.is_scheduled(SCHEDULED)
    assert not serverless.is_scheduled(http_v2_event("GET", "/healthz"))
    assert not serverless.is_scheduled({"source": "aws.events", "detail-type": "EC2 Instance State-change"})


# -- POST /v1/sweep ----------------------------------------------------------------------------------


async def test_sweep_endpoint_is_404_without_a_configured_token(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        answer = await h.client.post("/v1/sweep", headers={"authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 404 and "error" in answer.json()


@pytest.mark.parametrize("authorization", [None, "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
                                           TOKEN, "Bearer ", "Bearer \u00e9t\u00e9".encode()])
async def test_sweep_endpoint_is_401_without_the_right_key(tmp_path: Path, authorization: str | bytes | None) -> None:
    async with harness(tmp_path, sweep_token=TOKEN) as h:
        headers = {} if authorization is None else {"authorization": authorization}
        answer = await h.client.post("/v1/sweep", headers=headers)
        assert answer.status_code == 401 and "FLUXHOOK_SWEEP_TOKEN" in answer.json()["error"]


async def test_sweep_endpoint_runs_one_pass_and_answers_the_report(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(drop=True, runtime=0.0), sweep_token=TOKEN) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "sweep me"})
        h.clock.advance(120)  # past FLUXHOOK_POLL_AFTER: due for a poll
        answer = await h.client.post("/v1/sweep", headers={"authorization": f"bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["claimed"] >= 1 and all(isinstance(v, int) for v in report.values())
        done = await h.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED and done.polls == 1
        idle = await h.client.post("/v1/sweep", headers={"authorization": f"Bearer {TOKEN}"})
        assert idle.json() == {"claimed": 0}
        assert (await h.client.get("/v1/sweep")).status_code == 405


async def test_sweep_endpoint_is_503_when_the_store_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver.store import StoreUnavailable

    async with harness(tmp_path, sweep_token=TOKEN) as h:
        async def down(*args: Any, **kwargs: Any) -> int:
            raise StoreUnavailable("database is locked")

        monkeypatch.setattr(h.rt.store, "prune_events", down)
        answer = await h.client.post("/v1/sweep", headers={"authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"


async def test_a_callback_and_the_scheduled_sweep_store_the_result_in_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, aws_env: None,  # noqa: F811 (fixtures)
) -> None:
    """The serverless layout: PostgreSQL ledger, results in the S3 server, nothing on local disk."""
    prefix = f"lambda-{os.urandom(4).hex()}"
    extra = {"FLUXHOOK_RESULTS": f"s3://{BUCKET}/{prefix}", "FLUXHOOK_S3_ENDPOINT": s3_endpoint}
    async with lambda_env(tmp_path, monkeypatch, extra=extra) as env:
        job = await submit(env.rt, "bfl", "flux-dev", {"prompt": "a fox in the bucket"})
        assert job.provider_job_id
        body = await ready_result(env, job.provider_job_id)
        url, secret = callback_url(PUBLIC, MASTER.encode(), "bfl", job.id)
        event = http_v2_event("POST", url.removeprefix(PUBLIC), body, {"x-bfl-signature": sign_bfl(secret, body)})
        assert (await invoke(event))["statusCode"] == 200
        report = await invoke(SCHEDULED)
        done = await env.rt.store.get_job(job.id)
        assert done is not None and done.status == Status.STORED, (done, report)
        (record,) = await env.rt.store.files(job.id)
        assert record.path and env.rt.results.location(record.path) == f"s3://{BUCKET}/{prefix}/{job.id}/0.png"
        fetched = httpx.get(await env.rt.results.presign(record.path, 60))
        assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == record.sha256
        assert not (tmp_path / "results").exists()  # nothing went to the instance's disk

"""GET /readyz: 200 when the database answers and results can be written; 503 naming each problem to
operators (a bearer of FLUXHOOK_API_KEYS or FLUXHOOK_METRICS_TOKEN), a bare 503 to anyone else; the
checks run at most once per READY_TTL (the runtime's clock), however many callers ask."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from receiver.config.keys import parse_api_keys
from receiver.results.local import LocalResultStore
from receiver.web.api.ops import READY_TTL, Readiness
from tests.harness import Harness, harness

pytestmark = pytest.mark.anyio


#: FLUXHOOK_METRICS_TOKEN of these tests' receivers (`harness(..., metrics_token=OPS)`).
OPS = "ops-token-0123456789"


async def ready(h: Harness, token: str | None = OPS) -> tuple[int, dict]:
    """/readyz as an operator (the bearer `token`), or as anyone (None)."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = await h.client.get("/readyz", headers=headers)
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, response.json()


async def test_ready_when_the_database_answers_and_results_are_writable(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        assert await ready(h) == (200, {"ready": True})
        # The probe leaves nothing behind (the folder it had to create stays, empty).
        assert list((tmp_path / "results").iterdir()) == []
        health = await h.client.get("/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True  # liveness is unchanged


async def test_an_unwritable_results_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file: nothing can be created under it, not even by root")
    async with harness(tmp_path, results=blocker / "results", metrics_token=OPS) as h:
        status, body = await ready(h)
        assert status == 503 and body["ready"] is False
        (problem,) = body["problems"]
        assert problem.startswith(f"results: {blocker / 'results'} is not writable: ")
        assert "Not a directory" in problem or "File exists" in problem


async def test_a_closed_store_is_named(tmp_path: Path) -> None:
    async with harness(tmp_path, metrics_token=OPS) as h:
        await h.rt.store.close()
        status, body = await ready(h)
        assert status == 503
        assert body["problems"] == ["database: the store is not open"]


async def test_both_problems_at_once_and_shutdown(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    async with harness(tmp_path, results=blocker / "results", metrics_token=OPS) as h:
        await h.rt.store.close()
        h.rt.stopping.set()
        status, body = await ready(h)
        assert status == 503
        assert [p.split(":")[0] for p in body["problems"]] == ["database", "results", "shutting down"]


async def test_the_probe_of_a_read_only_folder(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        problem = await LocalResultStore(folder).probe()
        if os.geteuid() == 0:  # root writes anyway: the probe says so truthfully
            assert problem is None
        else:
            assert problem == f"results: {folder} is not writable: Permission denied"
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


from tests.receiver.results.test_results import BUCKET, aws_env, s3_endpoint  # noqa: E402, F401  (fixtures)


@pytest.mark.usefixtures("aws_env")
async def test_the_probe_of_an_object_store(request: pytest.FixtureRequest) -> None:
    import os

    import httpx

    from receiver.results.s3 import S3ResultStore

    endpoint = request.getfixturevalue("s3_endpoint")
    prefix = f"ready{os.urandom(4).hex()}"
    assert await S3ResultStore.from_url(f"s3://{BUCKET}/{prefix}", endpoint=endpoint).probe() is None
    listing = httpx.get(f"{endpoint}/{BUCKET}?list-type=2&prefix={prefix}")
    assert listing.status_code == 200 and "<Key>" not in listing.text  # written, then deleted
    problem = await S3ResultStore.from_url("s3://no-such-bucket-here", endpoint=endpoint).probe()
    assert problem is not None and problem.startswith("results: s3://no-such-bucket-here is not writable: ")
    assert "testing" not in problem  # no credential in the answer


# Who is told what, and how often the checks run (the security review's finding 6).


def blocked_results(tmp_path: Path) -> Path:
    """A results folder that cannot be created (a regular file is in the way)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    return blocker / "results"


async def test_anyone_gets_a_bare_503_and_operators_get_the_problems(tmp_path: Path) -> None:
    import dataclasses

    from tests.harness import make_settings

    results = blocked_results(tmp_path)
    api_key = "api-key-0123456789abcdef-xyz"
    integrations = dataclasses.replace(make_settings(tmp_path).integrations, api_keys=parse_api_keys(api_key))
    async with harness(tmp_path, results=results, metrics_token=OPS, integrations=integrations) as h:
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": f"Basic {OPS}"},
                        {"authorization": f"Bearer {OPS}x"}):
            response = await h.client.get("/readyz", headers=headers)
            assert response.status_code == 503 and response.json() == {"ready": False}, headers
            assert response.headers["retry-after"] == "5" and response.headers["cache-control"] == "no-store"
            assert str(tmp_path) not in response.text and "results" not in response.text
        for token in (OPS, api_key):  # FLUXHOOK_METRICS_TOKEN, or any key of FLUXHOOK_API_KEYS
            status, body = await ready(h, token)
            assert status == 503 and body["ready"] is False
            (problem,) = body["problems"]
            assert problem.startswith(f"results: {results} is not writable: ")


async def test_without_any_operator_credentials_configured_nobody_is_told(tmp_path: Path) -> None:
    async with harness(tmp_path, results=blocked_results(tmp_path)) as h:
        for token in (None, OPS):
            assert await ready(h, token) == (503, {"ready": False})
        h.rt.stopping.set()
        assert await ready(h, None) == (503, {"ready": False})


async def test_the_problems_are_logged_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = blocked_results(tmp_path)
    caplog.set_level(logging.WARNING, logger="fluxhook.ready")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "fluxhook.ready"]

    async with harness(tmp_path, results=results) as h:
        for _ in range(5):
            assert await ready(h, None) == (503, {"ready": False})
        (line,) = logged()  # what anyone asking is not told is in the log, once
        assert line.startswith(f"not ready: results: {results} is not writable: ")
        h.clock.advance(READY_TTL)
        await ready(h, None)
        assert len(logged()) == 2


def count_calls(monkeypatch: pytest.MonkeyPatch, target: object, name: str,
                gate: asyncio.Event | None = None) -> list[float]:
    """Replace `target.name` (async) by a wrapper that records each call, waiting for `gate` if given."""
    calls: list[float] = []
    real = getattr(target, name)

    async def counted(*args: object) -> object:
        calls.append(1)
        if gate is not None:
            await gate.wait()
        return await real(*args)

    monkeypatch.setattr(target, name, counted)
    return calls


async def test_a_flood_of_readyz_calls_probes_once_per_interval(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async with harness(tmp_path) as h:
        release = asyncio.Event()
        writes = count_calls(monkeypatch, h.rt.results, "probe", gate=release)
        reads = count_calls(monkeypatch, h.rt.store, "last_seq")
        # Twenty at once, the probe held while they arrive: one probe write for all of them.
        flood = [asyncio.create_task(h.client.get("/readyz")) for _ in range(20)]
        async with asyncio.timeout(10):
            while not writes:
                await asyncio.sleep(0)
        release.set()
        answers = await asyncio.gather(*flood)
        assert [a.status_code for a in answers] == [200] * 20
        assert (len(writes), len(reads)) == (1, 1)
        for _ in range(20):  # rapid calls within the interval reuse the answer
            assert (await h.client.get("/readyz")).json() == {"ready": True}
        h.clock.advance(READY_TTL - 0.01)
        await h.client.get("/readyz")
        assert (len(writes), len(reads)) == (1, 1)
        h.clock.advance(0.01)  # the interval is over: the next call checks again, once
        await asyncio.gather(*(h.client.get("/readyz") for _ in range(20)))
        assert (len(writes), len(reads)) == (2, 2)
        assert list((tmp_path / "results").iterdir()) == []


async def test_callers_during_a_probe_share_it_and_one_leaving_does_not_cancel_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness(tmp_path, results=blocked_results(tmp_path)) as h:
        release = asyncio.Event()
        writes = count_calls(monkeypatch, h.rt.results, "probe", gate=release)
        readiness = Readiness()
        callers = [asyncio.create_task(readiness.check(h.rt)) for _ in range(10)]
        async with asyncio.timeout(10):
            while not writes:
                await asyncio.sleep(0)
        late = asyncio.create_task(readiness.check(h.rt))  # arrives while the probe runs
        callers[0].cancel()  # a client that went away
        release.set()
        answers = await asyncio.gather(*callers[1:], late)
        assert len(writes) == 1 and callers[0].cancelled()
        assert len(set(answers)) == 1
        (problem,) = answers[0]
        assert problem.startswith("results: ")
        assert await readiness.check(h.rt) == answers[0] and len(writes) == 1

"""GET /readyz: 200 when the database answers and results can be written; 503 naming each problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.results.local import LocalResultStore
from tests.harness import Harness, harness

pytestmark = pytest.mark.anyio


async def ready(h: Harness) -> tuple[int, dict]:
    response = await h.client.get("/readyz")
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
    async with harness(tmp_path, results=blocker / "results") as h:
        status, body = await ready(h)
        assert status == 503 and body["ready"] is False
        (problem,) = body["problems"]
        assert problem.startswith(f"results: {blocker / 'results'} is not writable: ")
        assert "Not a directory" in problem or "File exists" in problem


async def test_a_closed_store_is_named(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.rt.store.close()
        status, body = await ready(h)
        assert status == 503
        assert body["problems"] == ["database: the store is not open"]


async def test_both_problems_at_once_and_shutdown(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    async with harness(tmp_path, results=blocker / "results") as h:
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

"""FLUXHOOK_RESULTS=s3://...: a job's result lands in an S3 server (moto, its own process on
loopback) with its sha256 and content type; `fluxhook status` and `fluxhook url` show it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import anyio
import httpx
import pytest

from receiver.cli.main import main
from receiver.engine.jobs import submit
from receiver.engine.sweep import sweep_once
from submitter.status import Status
from tests.harness import harness
from tests.receiver.results.test_results import BUCKET, aws_env, s3_endpoint  # noqa: F401 (fixtures)


def test_a_result_lands_in_the_bucket_and_the_cli_finds_it(
    tmp_path: Path, s3_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"s3://{BUCKET}/e2e-{os.urandom(4).hex()}/results"

    async def flow() -> tuple[str, str, str]:
        async with harness(tmp_path, results_url=url, s3_endpoint=s3_endpoint) as h:
            job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
            await h.settle()
            await sweep_once(h.rt)
            done = await h.rt.store.get_job(job.id)
            assert done is not None and done.status == Status.STORED
            (record,) = await h.rt.store.files(job.id)
            assert record.path == f"{job.id}/0.png" and record.content_type == "image/png"
            stat = await h.rt.results.stat(record.path)
            assert stat is not None
            assert (stat.size, stat.sha256, stat.content_type) == (record.size, record.sha256, "image/png")
            return job.id, record.sha256 or "", str(h.settings.db)

    job_id, sha256, db = anyio.run(flow)
    assert not (tmp_path / "results").exists()  # nothing went to the local folder

    monkeypatch.setenv("FLUXHOOK_DB", db)
    monkeypatch.setenv("FLUXHOOK_RESULTS", url)
    monkeypatch.setenv("FLUXHOOK_S3_ENDPOINT", s3_endpoint)
    capsys.readouterr()
    assert main(["status", job_id, "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["files"][0]["location"] == f"{url}/{job_id}/0.png"
    assert view["files"][0]["sha256"] == sha256

    assert main(["status", job_id]) == 0
    assert f"file 0: {url}/{job_id}/0.png" in capsys.readouterr().out

    assert main(["url", job_id, "--expires", "120"]) == 0
    signed = capsys.readouterr().out.strip()
    assert signed.startswith(f"{s3_endpoint}/{BUCKET}/") and "X-Amz-Signature=" in signed
    response = httpx.get(signed)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert hashlib.sha256(response.content).hexdigest() == sha256

    assert main(["url", job_id, "3"]) == 2  # no such file
    assert "no stored file 3" in capsys.readouterr().err


def test_url_for_a_local_folder_prints_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    async def flow() -> tuple[str, str, Path]:
        async with harness(tmp_path) as h:
            job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
            await h.settle()
            await sweep_once(h.rt)
            return job.id, str(h.settings.db), h.settings.results

    job_id, db, folder = anyio.run(flow)
    monkeypatch.setenv("FLUXHOOK_DB", db)
    monkeypatch.setenv("FLUXHOOK_RESULTS", str(folder))
    capsys.readouterr()
    assert main(["url", job_id]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == (folder / job_id / "0.png").absolute() and path.read_bytes().startswith(b"\x89PNG")
    assert main(["status", job_id]) == 0
    assert f"file 0: {folder / job_id / '0.png'}" in capsys.readouterr().out


@pytest.mark.anyio
async def test_a_receiver_killed_mid_upload_leaves_no_object_and_stores_it_after_restart(
    tmp_path: Path, s3_endpoint: str, aws_env: None,  # noqa: F811
) -> None:
    from receiver.config.settings import Settings
    from receiver.engine.runtime import Runtime
    from receiver.serve.background import bind, serve_in_background
    from submitter.simulator import Faults, Simulator
    from tests.e2e.support import env_for
    from tests.e2e.test_crash import Crashable

    url = f"s3://{BUCKET}/crash-{os.urandom(4).hex()}"
    sim = Simulator(default_faults=Faults(runtime=0.1, image_size=300_000), callback_retries=(0.5, 1.0, 2.0, 4.0))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        port = sock.getsockname()[1]
        sock.close()
        env = env_for(tmp_path, sim_url, f"http://127.0.0.1:{port}") | {
            "FLUXHOOK_LEASE_SECONDS": "1", "FLUXHOOK_POLL_AFTER": "0.3", "FLUXHOOK_SWEEP_INTERVAL": "0.2",
            "FLUXHOOK_RESULTS": url, "FLUXHOOK_S3_ENDPOINT": s3_endpoint,
        }
        async with Runtime.open(Settings.from_env(env)) as rt:
            c = Crashable(env, port, sim, rt)
            try:
                await c.start("mid-download")
                job = await submit(rt, "bfl", "flux-dev", {"prompt": "crash"})
                assert await c.died() == -9
                assert await rt.results.stat(f"{job.id}/0.png") is None  # nothing at the final key
                await c.start()
                done = await c.wait(job.id)
                assert done.status == Status.STORED
                (record,) = await rt.store.files(job.id)
                stat = await rt.results.stat(record.path or "")
                assert stat is not None and (stat.sha256, stat.size) == (record.sha256, record.size)
                assert await rt.results.clean_partials(job.id, 0.0) == 0  # no staging object left behind
            finally:
                c.stop()
    await sim.aclose()

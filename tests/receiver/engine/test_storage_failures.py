"""A result store that cannot take a file says where and which setting: a results folder that cannot be created
(ENOTDIR) and an S3 bucket that does not exist (moto's server on loopback). The job's note says it, the log says it
once per kind of failure (no traceback every sweep), /readyz's log names the bucket, and `fluxhook serve` refuses to
start on a bucket that does not exist."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from receiver.engine.downloading import DOWNLOAD_NOTE
from receiver.engine.jobs import submit
from receiver.engine.sweep import sweep_once
from receiver.serve.background import bind
from submitter.status import Status
from tests.e2e.support import env_for, run_cli
from tests.harness import harness
from tests.receiver.results.test_results import aws_env, s3_endpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio


def missing_bucket() -> str:
    return f"no-such-bucket-{os.urandom(4).hex()}"


async def test_a_folder_that_cannot_be_made_is_named_with_its_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the results folder's parent should be")
    async with harness(tmp_path, results=blocker / "results") as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.settle()
        await sweep_once(h.rt)
        stuck = await h.rt.store.get_job(job.id)
        assert stuck is not None and stuck.note is not None
        assert f"cannot write {(blocker / 'results' / job.id / '0.png').absolute()} (ENOTDIR" in stuck.note
        assert f"FLUXHOOK_RESULTS ({(blocker / 'results').absolute()})" in stuck.note


async def test_a_missing_bucket_is_on_the_note_and_logged_once_per_kind(
    tmp_path: Path, s3_endpoint: str, aws_env: None, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    bucket = missing_bucket()
    async with harness(tmp_path, results_url=f"s3://{bucket}/results", s3_endpoint=s3_endpoint) as h:
        jobs = [await submit(h.rt, "bfl", "flux-dev", {"prompt": f"fox {n}"}) for n in range(2)]
        await h.settle()
        with caplog.at_level(logging.INFO):
            for _ in range(3):  # sweep after sweep, as `serve` does
                report = await sweep_once(h.rt)
                assert report.actions["error"] == 0
                h.clock.advance(60)  # past each retry, within the log's window
        for job in jobs:
            stuck = await h.rt.store.get_job(job.id)
            assert stuck is not None and stuck.status == Status.SUCCEEDED
            assert stuck.note is not None and stuck.note.startswith(DOWNLOAD_NOTE)
            assert f"bucket '{bucket}' does not exist" in stuck.note and "FLUXHOOK_RESULTS" in stuck.note
        assert not [r for r in caplog.records if r.exc_info or r.exc_text]  # no traceback
        said = [r for r in caplog.records if f"bucket '{bucket}' does not exist" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.WARNING
        # /readyz's log line names the bucket too.
        caplog.clear()
        with caplog.at_level(logging.WARNING, "fluxhook.ready"):
            assert (await h.client.get("/readyz")).status_code == 503
        assert any(f"bucket '{bucket}' does not exist" in r.getMessage() for r in caplog.records)


async def test_serve_refuses_a_bucket_that_does_not_exist(
    tmp_path: Path, s3_endpoint: str, aws_env: None,  # noqa: F811
) -> None:
    bucket = missing_bucket()
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    env = env_for(tmp_path, "http://127.0.0.1:9", f"http://127.0.0.1:{port}") | {
        "FLUXHOOK_RESULTS": f"s3://{bucket}/results", "FLUXHOOK_S3_ENDPOINT": s3_endpoint,
    }
    code, _out, err = await run_cli(env, "serve", "--port", str(port))
    assert code == 2, err
    assert f"bucket '{bucket}' does not exist" in err and "FLUXHOOK_RESULTS" in err


async def test_the_start_check_only_warns_about_a_folder_it_cannot_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from receiver.config.settings import Settings
    from receiver.results import check_at_start

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings = Settings.from_env({"FLUXHOOK_RESULTS": str(blocker / "results")})
    with caplog.at_level(logging.WARNING):
        await check_at_start(settings)  # no SettingsError: the folder may be mounted later
    (line,) = [r for r in caplog.records if "FLUXHOOK_RESULTS" in r.getMessage()]
    assert str(blocker / "results") in line.getMessage()


async def test_an_upload_into_a_missing_bucket_says_which_and_what_failed(
    s3_endpoint: str, aws_env: None,  # noqa: F811
) -> None:
    import httpx

    from receiver.fetch.download import download
    from receiver.fetch.errors import DownloadError
    from receiver.results.s3 import S3ResultStore
    from tests.receiver.results.test_results import POLICY, URL, image, public

    bucket = missing_bucket()
    store = S3ResultStore.from_url(f"s3://{bucket}/p", endpoint=s3_endpoint)
    async with httpx.AsyncClient(transport=image()) as http:
        with pytest.raises(DownloadError) as caught:
            await download(http, URL, store.writer("fh_job", 0), POLICY, resolver=public)
    assert caught.value.kind == "transient" and caught.value.storage == "NoSuchBucket"
    assert str(caught.value) == (f"bucket '{bucket}' does not exist (uploading fh_job/0.png): create it or fix"
                                 f" FLUXHOOK_RESULTS (s3://{bucket}/p)")

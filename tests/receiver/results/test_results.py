"""One contract for every result store: the local folder and an S3-compatible store (moto's
server on loopback)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import moto.server  # noqa: F401  (test dependencies: never skipped)
import obstore
import pytest

from receiver.fetch.download import download
from receiver.fetch.errors import DownloadError
from receiver.fetch.policy import DownloadPolicy
from receiver.results import ResultStore
from receiver.results.local import LocalResultStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
URL = "https://cdn.test/r/sample.png?sig=abc"
POLICY = DownloadPolicy(allowed_hosts=("cdn.test",), max_bytes=64 * 1024 * 1024)
BUCKET = "fluxhook-results"
pytestmark = pytest.mark.anyio


async def public(host: str) -> list[str]:
    return ["93.184.216.34"]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in its own process (so its memory is not counted as ours), on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.put(f"{endpoint}/{BUCKET}").raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError("moto server did not start")
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def open_uploads(endpoint: str) -> list[str]:
    """Keys of the multipart uploads the server still holds open (ListMultipartUploads)."""
    response = httpx.get(f"{endpoint}/{BUCKET}?uploads")
    assert response.status_code == 200 and "<ListMultipartUploadsResult" in response.text, response.text[:300]
    return re.findall(r"<Key>([^<]*)</Key>", response.text)


@pytest.fixture(params=["local", "s3"])
async def results(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResultStore]:
    if request.param == "local":
        yield LocalResultStore(tmp_path / "results")
        return
    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("s3_endpoint")
    from receiver.results.s3 import S3ResultStore

    store = S3ResultStore.from_url(f"s3://{BUCKET}/p{os.urandom(4).hex()}/x", endpoint=endpoint)
    store.endpoint = endpoint  # type: ignore[attr-defined]
    yield store
    await store.close()


def image(body: bytes = PNG, content_type: str = "image/png", chunk: int = 64 * 1024) -> httpx.MockTransport:
    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i:i + chunk]

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for part in stream():
                yield part

    return httpx.MockTransport(lambda r: httpx.Response(200, headers={"content-type": content_type,
                                                                      "content-length": str(len(body))},
                                                        stream=Body()))


async def fetch(results: ResultStore, path: str) -> bytes:
    url = await results.presign(path, 300)
    if url.startswith(("http://", "https://")):
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
            response.raise_for_status()
            return response.content
    return Path(url).read_bytes()


async def test_download_lands_with_layout_and_metadata(results: ResultStore) -> None:
    async with httpx.AsyncClient(transport=image()) as http:
        stored = await download(http, URL, results.writer("fh_job", 0), POLICY, resolver=public)
    assert stored.key == "fh_job/0.png"
    assert (stored.size, stored.sha256, stored.content_type) == (len(PNG), hashlib.sha256(PNG).hexdigest(),
                                                                 "image/png")
    stat = await results.stat("fh_job/0.png")
    assert stat is not None
    assert (stat.size, stat.sha256, stat.content_type) == (len(PNG), stored.sha256, "image/png")
    assert await fetch(results, "fh_job/0.png") == PNG
    assert await results.stat("fh_job/1.png") is None


async def test_location_strings(results: ResultStore) -> None:
    where = results.location("fh_job/0.png")
    if isinstance(results, LocalResultStore):
        assert where == str(results.folder / "fh_job" / "0.png")
    else:
        assert where == f"{results.url}/fh_job/0.png" and where.startswith(f"s3://{BUCKET}/")


async def test_nothing_is_visible_before_commit_and_abort_leaves_nothing(results: ResultStore) -> None:
    sink = results.writer("fh_job", 3)
    await sink.begin("image/png")
    await sink.write(PNG, hashlib.sha256())
    assert await results.stat("fh_job/3.png") is None
    await sink.abort()
    assert await results.stat("fh_job/3.png") is None
    assert await results.clean_partials("fh_job", 0.0) == 0  # abort left no staging file behind either
    if not isinstance(results, LocalResultStore):
        assert [u for u in open_uploads(results.endpoint) if "fh_job/" in u] == []  # type: ignore[attr-defined]


async def test_a_rejected_body_leaves_nothing(results: ResultStore) -> None:
    async with httpx.AsyncClient(transport=image(b"GIF89a" + bytes(1000))) as http:
        with pytest.raises(DownloadError) as info:
            await download(http, URL, results.writer("fh_bad", 0), POLICY, resolver=public)
    assert info.value.kind == "rejected"
    assert await results.stat("fh_bad/0.png") is None
    assert await results.clean_partials("fh_bad", 0.0) == 0


async def test_a_truncated_large_body_aborts_the_upload(results: ResultStore) -> None:
    body = b"\x89PNG\r\n\x1a\n" + os.urandom(12 * 1024 * 1024)

    def cut(request: httpx.Request) -> httpx.Response:  # promises more than it sends
        return httpx.Response(200, headers={"content-type": "image/png", "content-length": str(len(body) + 10)},
                              content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(cut)) as http:
        with pytest.raises(DownloadError) as info:
            await download(http, URL, results.writer("fh_cut", 0), POLICY, resolver=public)
    assert info.value.kind == "transient"
    assert await results.stat("fh_cut/0.png") is None
    assert await results.clean_partials("fh_cut", 0.0) == 0
    if not isinstance(results, LocalResultStore):
        assert [u for u in open_uploads(results.endpoint) if "fh_cut/" in u] == []  # type: ignore[attr-defined]


async def test_a_large_file_streams_in_parts_with_bounded_memory(results: ResultStore) -> None:
    body = b"\x89PNG\r\n\x1a\n" + os.urandom(40 * 1024 * 1024)
    staged: list[str] = []
    if not isinstance(results, LocalResultStore):
        copy = results.copy_with_metadata  # type: ignore[attr-defined]

        async def spy(source: str, target: str, media: str, sha256: str) -> bool:
            staged.append(str((await obstore.head_async(results.store, source))["e_tag"]))  # type: ignore[attr-defined]
            return await copy(source, target, media, sha256)

        results.copy_with_metadata = spy  # type: ignore[attr-defined]
    tracemalloc.start()
    try:
        async with httpx.AsyncClient(transport=image(body, chunk=256 * 1024)) as http:
            stored = await download(http, URL, results.writer("fh_big", 0), POLICY, resolver=public)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Never the whole 40 MiB: a part being filled, the parts in flight (obstore holds the chunks
    # until they are sent) and the hand-over queue.
    assert peak < 20 * 1024 * 1024, peak
    assert stored.size == len(body) and stored.sha256 == hashlib.sha256(body).hexdigest()
    assert await fetch(results, "fh_big/0.png") == body
    stat = await results.stat("fh_big/0.png")
    assert stat is not None and stat.sha256 == stored.sha256
    if not isinstance(results, LocalResultStore):
        (etag,) = staged  # the upload was multipart (nine parts of 5 MiB), then copied server-side
        assert etag.strip('"').endswith("-9"), etag


def test_results_setting_names_a_folder_or_a_bucket() -> None:
    from receiver.config.settings import Settings, SettingsError
    from receiver.results import from_settings

    local = Settings.from_env({"FLUXHOOK_RESULTS": "/srv/results"})
    assert local.results == Path("/srv/results") and local.results_url is None
    assert isinstance(from_settings(local), LocalResultStore)
    assert Settings.from_env({}).results_url is None
    s3 = Settings.from_env({"FLUXHOOK_RESULTS": "s3://bucket/some/prefix/", "FLUXHOOK_S3_ENDPOINT": "http://127.0.0.1:9"})
    assert s3.results_url == "s3://bucket/some/prefix" and s3.s3_endpoint == "http://127.0.0.1:9"
    assert Settings.from_env({"FLUXHOOK_RESULTS": "s3://bucket"}).results_url == "s3://bucket"
    for bad in ("gs://bucket/x", "s3:///nobucket", "s3://bucket/x?versionId=1", "https://example.com/x"):
        with pytest.raises(SettingsError, match="FLUXHOOK_RESULTS"):
            Settings.from_env({"FLUXHOOK_RESULTS": bad})


def test_s3_store_from_settings_lays_out_under_its_prefix(aws_env: None) -> None:
    from receiver.config.settings import Settings
    from receiver.results import from_settings
    from receiver.results.s3 import S3ResultStore

    store = from_settings(Settings.from_env({"FLUXHOOK_RESULTS": "s3://bucket/a/b", "FLUXHOOK_S3_ENDPOINT":
                                             "http://127.0.0.1:9"}))
    assert isinstance(store, S3ResultStore)
    assert store.location("fh_1/0.png") == "s3://bucket/a/b/fh_1/0.png"
    assert S3ResultStore.from_url("s3://bucket").location("fh_1/0.png") == "s3://bucket/fh_1/0.png"


async def test_without_static_credentials_the_staged_object_is_streamed_into_place(
    tmp_path: Path, s3_endpoint: str, aws_env: None,
) -> None:
    from receiver.results.s3 import S3ResultStore

    store = S3ResultStore.from_url(f"s3://{BUCKET}/nocreds{os.urandom(4).hex()}", endpoint=s3_endpoint)
    store.credentials = None  # as with an instance role: obstore signs, no server-side copy
    body = b"\x89PNG\r\n\x1a\n" + os.urandom(12 * 1024 * 1024)
    async with httpx.AsyncClient(transport=image(body, chunk=256 * 1024)) as http:
        stored = await download(http, URL, store.writer("fh_rs", 1), POLICY, resolver=public)
    stat = await store.stat("fh_rs/1.png")
    assert stat is not None and (stat.size, stat.sha256, stat.content_type) == (len(body), stored.sha256, "image/png")
    assert await fetch(store, "fh_rs/1.png") == body
    assert await store.clean_partials("fh_rs", 0.0) == 0


def test_sigv4_matches_botocore() -> None:
    import datetime as dt

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from receiver.results.sigv4 import sigv4

    url = "https://bucket.s3.eu-west-1.amazonaws.com/pre%20fix/fh_1/0.png"
    headers = {"x-amz-copy-source": "/bucket/pre%20fix/fh_1/.0.abc.part", "x-amz-metadata-directive": "REPLACE",
               "content-type": "image/png", "x-amz-meta-sha256": "ab" * 32}
    empty = hashlib.sha256(b"").hexdigest()
    for token in (None, "session-token"):
        request = AWSRequest(method="PUT", url=url, headers=dict(headers))
        S3SigV4Auth(Credentials("AKIDEXAMPLE", "secret/key", token), "s3", "eu-west-1").add_auth(request)
        when = dt.datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        ours = sigv4("PUT", url, headers, "eu-west-1", "AKIDEXAMPLE", "secret/key", token, now=when, payload=empty)
        assert request.headers["X-Amz-Content-SHA256"] == empty
        assert ours["authorization"] == request.headers["Authorization"], (ours, dict(request.headers))


async def test_clean_partials_removes_a_dead_uploads_leftovers_only(results: ResultStore) -> None:
    async with httpx.AsyncClient(transport=image()) as http:
        await download(http, URL, results.writer("fh_dead", 0), POLICY, resolver=public)
    if isinstance(results, LocalResultStore):
        (results.folder / "fh_dead" / ".1.0123456789abcdef.part").write_bytes(PNG[:100])
    else:  # a staged object whose process died before the copy
        await obstore.put_async(results.store, results.full("fh_dead/.1.0123456789abcdef.part"),  # type: ignore[attr-defined]
                                PNG[:100])
    assert await results.clean_partials("fh_dead", 3600.0) == 0  # too young: maybe a live upload
    assert await results.clean_partials("fh_dead", 0.0) == 1
    assert await results.clean_partials("fh_dead", 0.0) == 0
    assert await results.stat("fh_dead/0.png") is not None  # the finished file stays


async def test_a_dead_upload_leaves_only_an_invisible_incomplete_multipart_upload(
    s3_endpoint: str, aws_env: None,
) -> None:
    """What SIGKILL leaves: parts uploaded at the staging key, no object at any key, until an
    AbortIncompleteMultipartUpload lifecycle rule (or an abort) removes them."""
    import asyncio

    from receiver.results.s3 import S3ResultStore

    store = S3ResultStore.from_url(f"s3://{BUCKET}/dead{os.urandom(4).hex()}", endpoint=s3_endpoint)
    sink = store.writer("fh_kill", 0)
    await sink.begin("image/png")
    digest = hashlib.sha256()
    for _ in range(11):
        await sink.write(b"\x89PNG\r\n\x1a\n" + bytes(1024 * 1024 - 8), digest)
    async with asyncio.timeout(10):
        while not [k for k in open_uploads(s3_endpoint) if k == sink.staging]:
            await asyncio.sleep(0.05)
    assert sink._task is not None
    sink._task.cancel()  # the process is gone: nobody completes or aborts the upload
    with pytest.raises(asyncio.CancelledError):
        await sink._task
    assert await store.stat("fh_kill/0.png") is None
    listed = [m["path"] async for batch in obstore.list(store.store, prefix=store.full("fh_kill/")) for m in batch]
    assert listed == []  # not even the staging key: its parts are invisible
    assert sink.staging in open_uploads(s3_endpoint)


async def test_result_response_serves_a_file_or_redirects_to_a_presigned_url(results: ResultStore) -> None:
    from receiver.store import FileRecord
    from receiver.web.files import result_response

    async with httpx.AsyncClient(transport=image()) as http:
        stored = await download(http, URL, results.writer("fh_web", 0), POLICY, resolver=public)
    record = FileRecord(job_id="fh_web", n=0, url=URL, expires_at=0.0, path=stored.key, size=stored.size,
                        sha256=stored.sha256, content_type=stored.content_type)
    response = await result_response(results, record, max_age=60)
    if isinstance(results, LocalResultStore):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    else:
        assert response.status_code == 307
        async with httpx.AsyncClient() as http:
            fetched = await http.get(response.headers["location"])
        assert fetched.content == PNG and fetched.headers["content-type"] == "image/png"
    missing = FileRecord(job_id="fh_web", n=1, url=URL, expires_at=0.0, path="../etc/passwd")
    assert (await result_response(results, missing)).status_code == 404

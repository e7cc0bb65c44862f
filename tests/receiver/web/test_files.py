"""Serving stored result files: inert content types, hardening headers, no way out of the results folder."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.store import FileRecord
from receiver.web.files import served_type, stored_file_response

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + bytes(100)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def record(path: str | None, content_type: str | None = "image/png") -> FileRecord:
    return FileRecord(job_id="j1", n=0, url="https://x.bfl.ai/s.png?sig=x", expires_at=0.0, path=path,
                      size=None, sha256=None, content_type=content_type)


async def serve(results: Path, rec: FileRecord, **kwargs: int) -> httpx.Response:
    async def route(request: Request) -> Response:
        return stored_file_response(results, rec, **kwargs)

    app = Starlette(routes=[Route("/file", route)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gallery.test") as client:
        return await client.get("/file")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    (folder / "j1").mkdir(parents=True)
    (folder / "j1" / "0.png").write_bytes(PNG)
    (folder / "j1" / "1.svg").write_bytes(SVG)
    (tmp_path / "outside.png").write_bytes(b"secret outside the results folder")
    return folder


def assert_hardened(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "default-src 'none'; sandbox"


async def test_serves_a_stored_png(results: Path) -> None:
    response = await serve(results, record("j1/0.png"))
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "private, max-age=3600"
    assert_hardened(response)


async def test_max_age_is_configurable(results: Path) -> None:
    response = await serve(results, record("j1/0.png"), max_age=60)
    assert response.headers["cache-control"] == "private, max-age=60"


@pytest.mark.parametrize(
    ("content_type", "served"),
    [
        ("image/png", "image/png"),
        ("image/jpeg", "image/jpeg"),
        ("image/jpg", "image/jpeg"),
        ("IMAGE/WEBP; q=1", "image/webp"),
        ("image/gif", "image/gif"),
        ("image/avif", "image/avif"),
        ("image/svg+xml", "application/octet-stream"),  # recorded by an older version: never rendered as SVG
        ("text/html", "application/octet-stream"),
        ("image/tiff", "application/octet-stream"),
        ("", "application/octet-stream"),
        (None, "application/octet-stream"),
    ],
)
async def test_content_type_only_for_raster_types(results: Path, content_type: str | None, served: str) -> None:
    assert served_type(content_type) == served
    response = await serve(results, record("j1/1.svg", content_type))
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == served
    assert_hardened(response)


@pytest.mark.parametrize(
    "path",
    ["../outside.png", "j1/../../outside.png", "./../outside.png", "{outside}", "j1/missing.png", "j1", ".", "",
     "j1/0.png\x00.txt", None],
)
async def test_refused_paths_are_404(results: Path, path: str | None) -> None:
    if path == "{outside}":
        path = str(results.parent / "outside.png")  # an absolute path
    response = await serve(results, record(path))
    assert response.status_code == 404
    assert b"secret" not in response.content
    assert response.headers["cache-control"] == "no-store"
    assert_hardened(response)


async def test_symlink_out_of_the_results_folder_refused(results: Path) -> None:
    os.symlink(results.parent / "outside.png", results / "j1" / "2.png")
    os.symlink(results.parent, results / "j1" / "up")
    assert (await serve(results, record("j1/2.png"))).status_code == 404
    assert (await serve(results, record("j1/up/outside.png"))).status_code == 404


async def test_symlink_within_the_results_folder_served(results: Path) -> None:
    os.symlink("0.png", results / "j1" / "3.png")
    response = await serve(results, record("j1/3.png"))
    assert response.status_code == 200 and response.content == PNG


async def test_results_folder_given_relative_or_through_a_symlink(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(results.parent)
    assert (await serve(Path("results"), record("j1/0.png"))).status_code == 200
    os.symlink(results, results.parent / "link")
    assert (await serve(results.parent / "link", record("j1/0.png"))).status_code == 200
    assert (await serve(results.parent / "missing", record("j1/0.png"))).status_code == 404

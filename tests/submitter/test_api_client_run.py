"""The /v1 client's one-call convenience (`run`: create, wait, download), `from_env`, and the `fluxhook` import
name, sync and async, against mock handlers that speak the contract (README "The Python client")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import submitter.api_client
from submitter.api_client import ApiError, AsyncFluxhookClient, FluxhookClient, JobFailed
from tests.submitter.test_api_client import BASE, KEY, Api, Handler, stream, view

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> Callable[..., Api]:
    return lambda handler, **options: Api(request.param, handler, **options)


def png(n: int) -> dict[str, Any]:
    return {"n": n, "size": 5, "sha256": None, "content_type": "image/png", "location": f"/r/fh_1/{n}.png",
            "url": f"/v1/jobs/fh_1/files/{n}"}


def service(end: dict[str, Any]) -> Handler:
    """POST /v1/jobs makes fh_1 (queued); GET shows it as `end`; file n is b"PNG-n"."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/jobs":
            return httpx.Response(201, json=view(id=end["id"]))
        if path == f"/v1/jobs/{end['id']}":
            return httpx.Response(200, json=end)
        if match := re.fullmatch(r"/v1/jobs/[^/]+/files/(\d+)", path):
            return httpx.Response(200, content=f"PNG-{match[1]}".encode(), headers={"content-type": "image/png"})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    return handler


@pytest.mark.anyio
async def test_run_creates_waits_and_downloads_every_file(api: Callable[..., Api], tmp_path: Path) -> None:
    # Files listed out of order, one of a type with no known extension: paths in file order, named by job and n.
    files = [png(1), {**png(0), "content_type": None}, {**png(2), "content_type": "image/jpeg"}]
    a = api(service(view(status="stored", files=files)))
    into = tmp_path / "new" / "out"
    paths = await a("run", "bfl", "flux-dev", {"prompt": "fox"}, into=into, idempotency_key="order-7",
                    metadata={"order": 7})
    await a.close()
    assert paths == [into / "fh_1-0", into / "fh_1-1.png", into / "fh_1-2.jpg"]
    assert [p.read_bytes() for p in paths] == [b"PNG-0", b"PNG-1", b"PNG-2"]
    assert sorted(p.name for p in into.iterdir()) == ["fh_1-0", "fh_1-1.png", "fh_1-2.jpg"]  # no .part left
    create = a.requests[0]
    assert create.headers["idempotency-key"] == "order-7"
    assert json.loads(create.content) == {"provider": "bfl", "model": "flux-dev", "params": {"prompt": "fox"},
                                          "metadata": {"order": 7}}
    assert [r.url.path for r in a.requests] == ["/v1/jobs", "/v1/jobs/fh_1", *(f"/v1/jobs/fh_1/files/{n}"
                                                                                for n in range(3))]


@pytest.mark.anyio
@pytest.mark.parametrize("status", ["failed", "moderated", "expired", "canceled"])
async def test_run_raises_job_failed_for_a_job_that_ends_without_files(
    api: Callable[..., Api], tmp_path: Path, status: str
) -> None:
    a = api(service(view(status=status, error="provider said no")))
    with pytest.raises(JobFailed) as info:
        await a("run", "bfl", "flux-dev", {"prompt": "fox"}, into=tmp_path / "out")
    await a.close()
    assert info.value.job.status == status and info.value.job.id == "fh_1"
    assert str(info.value) == f"job fh_1 ended {status}: provider said no"
    assert not (tmp_path / "out").exists() and not any(r.url.path.endswith("/files/0") for r in a.requests)


@pytest.mark.anyio
async def test_run_never_writes_outside_its_folder(api: Callable[..., Api], tmp_path: Path) -> None:
    """A job id from the server is used in a file name only when it is a plain name."""
    a = api(service(view(id="../../evil", status="stored", files=[png(0)])))
    with pytest.raises(ApiError) as info:
        await a("run", "bfl", "flux-dev", {"prompt": "fox"}, into=tmp_path / "a" / "b")
    await a.close()
    assert info.value.code == "bad_response" and list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_run_times_out_and_the_same_key_finds_the_same_job_later(tmp_path: Path) -> None:
    job = view(status="running")
    posts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(request.headers["idempotency-key"])
        if request.url.path == "/v1/events":
            return stream(hang=True)  # the job's stream, where nothing more happens
        return service(job)(request)

    async with AsyncFluxhookClient(BASE, KEY, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TimeoutError, match="fh_1 not finished"):
            await client.run("bfl", "flux-dev", {"prompt": "fox"}, into=tmp_path, idempotency_key="k-1",
                             timeout=0.05)
        job.update(status="stored", files=[png(0)])
        assert await client.run("bfl", "flux-dev", {"prompt": "fox"}, into=tmp_path,
                                idempotency_key="k-1") == [tmp_path / "fh_1-0.png"]
    assert posts == ["k-1", "k-1"]


def test_from_env_names_the_variable_that_is_missing() -> None:
    with pytest.raises(ValueError, match=r"^FLUXHOOK_API_URL is not set"):
        FluxhookClient.from_env({"FLUXHOOK_API_KEY": KEY})
    with pytest.raises(ValueError, match=r"^FLUXHOOK_API_KEY is not set"):
        AsyncFluxhookClient.from_env({"FLUXHOOK_API_URL": BASE, "FLUXHOOK_API_KEY": " "})
    for bad in ("localhost:8000", "http://[::1"):
        with pytest.raises(ValueError, match=r"^FLUXHOOK_API_URL: base_url must be an http"):
            FluxhookClient.from_env({"FLUXHOOK_API_URL": bad, "FLUXHOOK_API_KEY": KEY})


@pytest.mark.anyio
async def test_from_env_reads_the_cli_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXHOOK_API_URL", BASE + "/")
    monkeypatch.setenv("FLUXHOOK_API_KEY", KEY)
    with FluxhookClient.from_env(timeout=5.0) as client:
        assert isinstance(client, FluxhookClient) and client.base_url == BASE and KEY not in repr(client)
    async with AsyncFluxhookClient.from_env() as aclient:
        assert isinstance(aclient, AsyncFluxhookClient) and aclient.base_url == BASE


def test_the_client_is_one_import_line_and_loads_no_receiver() -> None:
    for name in ("FluxhookClient", "AsyncFluxhookClient", "ApiError", "JobFailed", "RetryPolicy"):
        assert name in submitter.api_client.__all__
    probe = ("import sys; from submitter.api_client import FluxhookClient;"
             " print(sorted(m for m in sys.modules if m.split('.')[0] == 'receiver'))")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"


#: `README.md, "Section"` or `README "Section"` (a quoted heading, possibly wrapped over lines of a docstring).
_README_CITE = re.compile(r'README(?:\.md)?,?\s+"([^"]+)"')
#: A path a docstring or comment names: a slash in it, a file suffix at the end; or any absolute path.
_PATH_CITE = re.compile(r'(?<![\w./-])((?:/|[\w.-]+/)(?:[\w.-]+/)*[\w.-]+\.(?:md|py|toml|ya?ml|json|txt|sh))\b')


def stale_citations(text: str, headings: list[str]) -> list[str]:
    """What a module's text cites that is not there: a README section no heading starts with, a file
    that is not in the repository."""
    found = [f"README {m!r}" for m in (" ".join(c.split()) for c in _README_CITE.findall(text))
             if not any(h.startswith(m) for h in headings)]
    return found + [p for p in _PATH_CITE.findall(text) if p.startswith("/") or not (ROOT / p).exists()]


def readme_headings() -> list[str]:
    headings, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            headings.append(line.lstrip("#").strip())
    return headings


def test_the_clients_docstrings_cite_only_what_is_in_the_repository() -> None:
    headings = readme_headings()
    assert "The Python client" in headings
    modules = sorted((ROOT / "submitter").rglob("*.py"))
    assert len(modules) > 20
    stale = {str(p.relative_to(ROOT)): s for p in modules if (s := stale_citations(p.read_text(), headings))}
    assert stale == {}
    # What the check is for: the client's first docstring cited a note outside the repository.
    assert stale_citations('"""A typed client (see /work/notes/api-contract.md)."""', headings) == [
        "/work/notes/api-contract.md"]
    assert stale_citations('(README.md, "Integrations: the HTTP API, the event\n    stream and sinks")', headings) == []

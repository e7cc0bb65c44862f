"""`fluxhook submit|status|list` through the /v1 API (FLUXHOOK_API_URL), against the real app on loopback.

The receiver (with its sweep and download workers) and the simulator are real uvicorn servers; the CLI runs in a
thread with an environment that names no database, as on a host that has none. Waits are for events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from receiver.cli.main import main
from receiver.config.settings import Settings
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from submitter.simulator import Faults, Simulator
from tests.e2e.support import env_for

KEY = "k" * 20
#: Every variable the CLI could find a database or a provider through.
_SCRUBBED = ("FLUXHOOK_DB", "FLUXHOOK_RESULTS", "FLUXHOOK_PUBLIC_URL", "FLUXHOOK_SECRET_KEY", "FLUXHOOK_API_URL",
             "FLUXHOOK_API_KEY", "FLUXHOOK_API_KEYS", "BFL_API_KEY")


@dataclass
class Served:
    url: str
    settings: Settings
    sim: Simulator


def _has_api() -> bool:
    return any(getattr(r, "path", "") == "/v1/jobs" for r in create_app(Settings()).routes)


@pytest.fixture
def client_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The CLI's side: no database, no provider keys; the working directory is empty so a stray ledger would show."""
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "cli-host"
    home.mkdir()
    monkeypatch.chdir(home)
    yield home


@contextlib.asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    if not _has_api():
        pytest.skip("the /v1 routes are not in receiver/web/app.py yet")
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=(0.05, 0.1))
    sim.add_rule("hold", Faults(drop=True, runtime=3600))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env = env_for(tmp_path / "server", sim_url, url) | {"FLUXHOOK_API_KEYS": KEY, "FLUXHOOK_SSE_HEARTBEAT": "0.2"}
        settings = Settings.from_env(env)
        settings.results.mkdir(parents=True, exist_ok=True)
        async with serve_in_background(create_app(settings), sock):
            yield Served(url, settings, sim)
    await sim.aclose()


async def fluxhook(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str | None,
                   *argv: str, key: str | None = KEY) -> tuple[int, str, str]:
    """`fluxhook ARGV` with FLUXHOOK_API_URL=url (in a thread: it runs its own event loop)."""
    if url is not None:
        monkeypatch.setenv("FLUXHOOK_API_URL", url)
    if key is not None:
        monkeypatch.setenv("FLUXHOOK_API_KEY", key)
    capsys.readouterr()
    async with asyncio.timeout(60):
        code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.anyio
async def test_an_api_url_without_a_key_is_refused(client_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["status", "fh_1"], ["list"], ["submit", "--provider", "bfl", "--model", "flux-dev", "--prompt", "x"]):
        code, _, err = await fluxhook(monkeypatch, capsys, "http://127.0.0.1:9", *argv, key=None)
        assert code == 2 and "FLUXHOOK_API_KEY is not" in err
    assert list(client_env.iterdir()) == []


@pytest.mark.anyio
async def test_an_unreachable_api_is_exit_status_1(client_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sock = bind()  # bound, never listening: connections are refused
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        code, _, err = await fluxhook(monkeypatch, capsys, url, "status", "fh_1")
    finally:
        sock.close()
    assert code == 1 and "unreachable" in err and KEY not in err


@pytest.mark.anyio
async def test_submit_wait_status_and_list_through_the_api(tmp_path: Path, client_env: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    async with served(tmp_path) as s:
        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "submit", "--provider", "bfl", "--model",
                                        "flux-dev", "--prompt", "a fox", "--param", "width=512", "--wait", "--json")
        assert code == 0, err
        job = json.loads(out)
        assert job["status"] == "stored" and job["created_at"].endswith("Z")
        (file,) = job["files"]
        stored = s.settings.results / job["id"] / "0.png"
        assert file["n"] == 0 and file["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()

        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "status", job["id"], "--json")
        assert code == 0 and json.loads(out) == job
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "status", job["id"])
        assert code == 0 and f"id={job['id']}" in out and "status=stored" in out and "file 0:" in out

        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "submit", "--provider", "bfl", "--model",
                                      "flux-dev", "--prompt", "hold me")
        held = out.strip()
        assert code == 0 and held.startswith("fh_") and held != job["id"]

        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "list", "--json")
        assert code == 0 and [j["id"] for j in json.loads(out)] == [held, job["id"]]  # newest first
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "list", "--status", "stored", "--limit", "1")
        assert code == 0 and out.count("\n") == 1 and f"id={job['id']}" in out
    assert list(client_env.iterdir()) == []  # no ledger on the CLI's host


@pytest.mark.anyio
async def test_submit_wait_gives_up_after_the_timeout(tmp_path: Path, client_env: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    async with served(tmp_path) as s:
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "submit", "--provider", "bfl", "--model",
                                      "flux-dev", "--prompt", "hold on", "--wait", "--timeout", "0.5")
        assert code == 3 and "not finished after" in err and "fluxhook status fh_" in err


@pytest.mark.anyio
async def test_api_errors_are_reported_with_their_code(tmp_path: Path, client_env: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    async with served(tmp_path) as s:
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "status", "fh_missing")
        assert code == 2 and "not_found" in err
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "list", key="w" * 20)
        assert code == 2 and "unauthorized" in err and "w" * 20 not in err
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "submit", "--provider", "bfl", "--model",
                                      "no such model!", "--prompt", "x")
        assert code == 2 and "invalid" in err

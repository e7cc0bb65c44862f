"""The ledger does not depend on the working directory (issue 20, item 2): FLUXHOOK_DB and FLUXHOOK_RESULTS
default to a per-user data directory; a ledger an older version left in the working directory is refused
with the fix, never passed over for an empty one; `serve` and `status` say which database and results
location they use."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from receiver.cli import serve
from receiver.cli.main import main
from receiver.config.settings import Settings
from tests.receiver.cli.test_cli_batch import fluxhook, simulator

pytestmark = pytest.mark.anyio

KEY = "k" * 40


def test_the_defaults_are_in_the_per_user_data_directory() -> None:
    s = Settings.from_env({"XDG_DATA_HOME": "/xdg", "HOME": "/home/u"})
    assert s.db == "/xdg/fluxhook/fluxhook.db" and s.results == Path("/xdg/fluxhook/results")
    s = Settings.from_env({"HOME": "/home/u"})
    assert s.db == "/home/u/.local/share/fluxhook/fluxhook.db"
    assert s.results == Path("/home/u/.local/share/fluxhook/results")
    # A relative XDG_DATA_HOME is ignored, as the XDG Base Directory specification says.
    assert Settings.from_env({"XDG_DATA_HOME": "data", "HOME": "/home/u"}).db.startswith("/home/u/.local/share/")
    s = Settings.from_env({"FLUXHOOK_DB": "/srv/f.db", "FLUXHOOK_RESULTS": "/srv/r", "HOME": "/home/u"})
    assert (s.db, s.results) == ("/srv/f.db", Path("/srv/r"))


@pytest.fixture
def per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No FLUXHOOK_DB / FLUXHOOK_RESULTS; the per-user data directory under tmp_path (not made yet)."""
    for name in ("FLUXHOOK_DB", "FLUXHOOK_RESULTS", "FLUXHOOK_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # an older version would make its ledger here, not in the repository
    return tmp_path / "data" / "fluxhook"


async def test_submit_here_and_status_there_use_one_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch):
        for name in ("FLUXHOOK_DB", "FLUXHOOK_RESULTS"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        for folder in ("project", "elsewhere"):
            (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / "project")
        code, out, err = await fluxhook(capsys, "submit", "--provider", "bfl", "--model", "flux-dev",
                                        "--prompt", "a fox")
        assert code == 0, err
        job_id = out.strip()
        monkeypatch.chdir(tmp_path / "elsewhere")
        code, out, err = await fluxhook(capsys, "status", job_id)
        assert code == 0, err
        assert f"id={job_id}" in out
        ledger = tmp_path / "data" / "fluxhook" / "fluxhook.db"
        assert f"(database {ledger}, results {ledger.parent / 'results'})" in err
        assert ledger.is_file() and not list(tmp_path.glob("*/fluxhook.db"))
        assert (ledger.parent.stat().st_mode & 0o777) == 0o700


def _old_ledger(folder: Path, *, results: bool = True) -> Path:
    folder.mkdir()
    (folder / "fluxhook.db").write_bytes(b"SQLite format 3\x00")
    if results:
        (folder / "results").mkdir()
    return folder


def test_a_ledger_left_in_the_working_directory_is_refused_with_the_fix(
    tmp_path: Path, per_user: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _old_ledger(tmp_path / "old")
    monkeypatch.chdir(old)
    for argv in (["list"], ["status", "fh_x"], ["migrate"], ["sweep"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{old / 'fluxhook.db'} exists" in err and str(per_user / "fluxhook.db") in err
        assert f"FLUXHOOK_DB={old / 'fluxhook.db'}" in err and f"FLUXHOOK_RESULTS={old / 'results'}" in err
        assert f"mv fluxhook.db* results {per_user}/" in err
    assert not per_user.exists()  # nothing was made
    monkeypatch.setenv("FLUXHOOK_SECRET_KEY", KEY)
    monkeypatch.setenv("FLUXHOOK_PUBLIC_URL", "https://hooks.example.com")
    monkeypatch.setattr(serve, "run", _must_not_run)
    assert main(["serve"]) == 2  # refused before the server starts
    assert "FLUXHOOK_DB is not set" in capsys.readouterr().err


def _must_not_run(*_: Any, **__: Any) -> None:
    raise AssertionError("the server was started")


def test_the_old_ledger_kept_by_name_or_the_new_one_present_opens(
    tmp_path: Path, per_user: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _old_ledger(tmp_path / "old", results=False)
    (old / "fluxhook.db").unlink()
    assert main(["migrate"]) == 0  # made elsewhere: a real ledger, then moved here as an older version left it
    (per_user / "fluxhook.db").rename(old / "fluxhook.db")
    monkeypatch.chdir(old)
    assert main(["list"]) == 2
    assert "FLUXHOOK_RESULTS" not in capsys.readouterr().err  # no ./results: only the ledger is named
    monkeypatch.setenv("FLUXHOOK_DB", str(old / "fluxhook.db"))
    assert main(["list", "--json"]) == 0
    monkeypatch.delenv("FLUXHOOK_DB")
    assert main(["migrate"]) == 2
    monkeypatch.chdir(tmp_path)
    assert main(["migrate"]) == 0  # the per-user ledger exists now: the one in old/ is no longer in the way
    monkeypatch.chdir(old)
    assert main(["list", "--json"]) == 0


def test_serve_says_which_database_and_results_it_uses(
    tmp_path: Path, per_user: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FLUXHOOK_SECRET_KEY", KEY)
    monkeypatch.setenv("FLUXHOOK_PUBLIC_URL", "https://hooks.example.com")
    started: list[Settings] = []
    monkeypatch.setattr(serve, "run", lambda app, settings, **_: started.append(settings))
    with caplog.at_level(logging.INFO, logger="fluxhook.serve"):
        assert main(["serve"]) == 0
    assert f"database {per_user / 'fluxhook.db'}, results {per_user / 'results'}" in caplog.text
    caplog.clear()
    monkeypatch.setenv("FLUXHOOK_DB", "postgresql://fluxhook:hunter22@127.0.0.1:5432/fluxhook")
    monkeypatch.setenv("FLUXHOOK_RESULTS", "s3://bucket/prefix")
    with caplog.at_level(logging.INFO, logger="fluxhook.serve"):
        assert main(["serve"]) == 0
    assert "database postgresql://fluxhook:***@127.0.0.1:5432/fluxhook, results s3://bucket/prefix" in caplog.text
    assert "hunter22" not in caplog.text and len(started) == 2

from __future__ import annotations

import json
from pathlib import Path

import pytest

from receiver.cli.commands import COMMANDS
from receiver.cli.main import main
from receiver.cli.parser import build_parser
from receiver.store.sql import MIGRATIONS

KEY = "c" * 40


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("FLUXHOOK_PUBLIC_URL", "FLUXHOOK_SECRET_KEY", "BFL_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLUXHOOK_DB", str(tmp_path / "cli.db"))
    monkeypatch.setenv("FLUXHOOK_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "fluxhook" in out.split("example:")[1]


def test_submit_refuses_without_a_secret_key(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["submit", "--provider", "bfl", "--model", "flux-dev", "--prompt", "x"])
    assert code == 2
    assert "FLUXHOOK_SECRET_KEY" in capsys.readouterr().err


def test_serve_refuses_without_a_public_url(env: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLUXHOOK_SECRET_KEY", KEY)
    assert main(["serve"]) == 2
    assert "FLUXHOOK_PUBLIC_URL" in capsys.readouterr().err


def test_bad_environment_is_named(env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLUXHOOK_POLL_AFTER", "often")
    assert main(["list"]) == 2
    assert "FLUXHOOK_POLL_AFTER" in capsys.readouterr().err


def test_bad_param_and_provider_are_usage_errors(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["submit", "--provider", "bfl", "--model", "m", "--prompt", "p", "--param", "novalue"],
                 ["submit", "--provider", "nope", "--model", "m", "--prompt", "p"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "key=value" in err and "invalid choice" in err


def test_list_status_and_sweep_on_an_empty_ledger(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["status", "fh_missing"]) == 2
    assert "no job 'fh_missing'" in capsys.readouterr().err
    assert main(["sweep", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"claimed": 0}


def test_demo_runs_the_whole_loop_in_its_own_folder(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--jobs", "5", "--keep", str(env / "demo")]) == 0
    out = capsys.readouterr().out
    assert out.count("stored ") == 6 and "via=poll " in out and "via=callback " in out  # 5 jobs, 6 files
    assert len(list((env / "demo" / "results").glob("fh_*/0.png"))) == 5
    assert len(list((env / "demo" / "results").glob("fh_*/1.png"))) == 1
    assert (env / "demo" / "demo.db").exists() and str(env / "demo") in out
    assert not (env / "cli.db").exists() and not (env / "results").exists()  # the user's ledger is untouched


def test_demo_defaults_to_a_temporary_folder(env: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(env / "tmp"))
    (env / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert main(["demo", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    made = list((env / "tmp").glob("fluxhook-demo-*"))
    assert len(made) == 1 and str(made[0]) in out and (made[0] / "demo.db").exists()
    assert not (env / "cli.db").exists()


def test_version_and_exit_codes_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("fluxhook ")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "exit codes: 0 ok" in out and "3 waiting timed out" in out and "130" in out


def test_simulate_help_documents_faults_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    from receiver.cli.simulate import simulate_env

    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    out = capsys.readouterr().out
    for fault in ("drop", "duplicate", "submit_errors", "expired_url", "outcome", "/_sim/rules"):
        assert fault in out
    env = "\n".join(simulate_env("127.0.0.1", 8900, key="k" * 64, folder=Path("/data/fluxhook/dev")))
    for name in ("FLUXHOOK_BFL_URL=http://127.0.0.1:8900", "BFL_API_KEY", "FLUXHOOK_DOWNLOAD_HOSTS=127.0.0.1",
                 "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE=1", "FLUXHOOK_DOWNLOAD_ALLOW_HTTP=1"):
        assert name in env


def test_migrate_and_check_on_sqlite(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    versions = ", ".join(str(v) for v, _, _ in MIGRATIONS)  # every migration, by number
    assert main(["migrate", "--check"]) == 1
    assert f"pending ({versions})" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert f"(applied {versions})" in capsys.readouterr().out
    assert main(["migrate", "--check"]) == 0 and "current" in capsys.readouterr().out
    assert main(["migrate"]) == 0 and "already current" in capsys.readouterr().out


def test_migrate_names_a_database_it_cannot_open(env: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXHOOK_DB", str(env / "no-such-folder" / "x.db"))
    assert main(["migrate"]) == 1
    assert "no-such-folder" in capsys.readouterr().err

"""Unknown FLUXHOOK_* variables: warned about at start with the closest known name; the registry of known
names (receiver/config/variables.py) holds every name the settings read and every name the repository mentions."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from receiver.cli.main import main
from receiver.config.settings import Settings
from receiver.config.variables import known_variables, unknown_variables

ROOT = Path(__file__).resolve().parents[3]


class Recording(Mapping[str, str]):
    """An empty environment that remembers every name looked up."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        self.names.add(str(name))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_every_variable_the_settings_read_is_known() -> None:
    env = Recording()
    Settings.from_env(env)
    read = {n for n in env.names if n.startswith("FLUXHOOK_")}
    assert len(read) > 50
    assert read - known_variables() == set(), "add these to receiver/config/variables.py"


def test_every_variable_the_repository_names_is_known() -> None:
    # A name shown as an example of the warning (`unknown variable FLUXHOOK_…`) is a typo on purpose.
    pattern = re.compile(r"(?<!unknown variable )\bFLUXHOOK_[A-Z0-9]+(?:_[A-Z0-9]+)*\b")
    found: dict[str, str] = {}
    for folder in ("receiver", "submitter", "tests", "bench", "deploy", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path != Path(__file__).resolve() and path.is_file() and path.suffix in (".py", ".md", ".yaml", ".yml", ".env", ".example", ".toml", ""):
                for name in pattern.findall(path.read_text(encoding="utf-8", errors="replace")):
                    found.setdefault(name, str(path.relative_to(ROOT)))
    for name in pattern.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        found.setdefault(name, "README.md")
    missing = {n: where for n, where in found.items() if n not in known_variables()}  # this file's typos aside
    assert missing == {}, "add these to receiver/config/variables.py (or fix the typo)"


def test_an_unknown_variable_names_its_closest_match() -> None:
    env = {"FLUXHOOK_PUBLC_URL": "https://x", "FLUXHOOK_DB": "x.db", "FLUXHOOK_ZZZ": "secret-value",
           "BFL_API_KEY": "k", "FLUXHOOK_BFL_MAX_ACTIVE": "3", "FLUXHOOK_DEERAPI_REPLICATE_MAX_ACTIVE": "2"}
    messages = unknown_variables(env)
    assert messages == ["unknown variable FLUXHOOK_PUBLC_URL is ignored: did you mean FLUXHOOK_PUBLIC_URL?",
                        "unknown variable FLUXHOOK_ZZZ is ignored (see README, Configuration)"]
    assert not any("secret-value" in m for m in messages)


def test_every_command_warns_once_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FLUXHOOK_DB", str(tmp_path / "x.db"))
    monkeypatch.setenv("FLUXHOOK_PUBLC_URL", "https://hooks.example")
    with caplog.at_level(logging.WARNING):
        assert main(["migrate", "--check"]) == 1  # any command that reads the settings
    lines = [r for r in caplog.records if "FLUXHOOK_PUBLC_URL" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "did you mean FLUXHOOK_PUBLIC_URL?" in lines[0].getMessage()


def test_the_uvicorn_factory_warns_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    from receiver.web.app import create_app_from_env

    monkeypatch.setenv("FLUXHOOK_DB", str(tmp_path / "x.db"))
    monkeypatch.setenv("FLUXHOOK_MAX_DOWNLOADBYTES", "1")
    with caplog.at_level(logging.WARNING):
        create_app_from_env()
    (line,) = [r for r in caplog.records if "FLUXHOOK_MAX_DOWNLOADBYTES" in r.getMessage()]
    assert "did you mean FLUXHOOK_MAX_DOWNLOAD_BYTES?" in line.getMessage()

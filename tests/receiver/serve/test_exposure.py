"""`fluxhook serve` beyond loopback refuses to start while GET /metrics would answer anyone (neither
FLUXHOOK_API_KEYS nor FLUXHOOK_METRICS_TOKEN set), unless FLUXHOOK_METRICS_PUBLIC=1. Nothing is bound
here: the check is called directly, and the CLI runs with uvicorn's `run` replaced."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from receiver.cli.main import main
from receiver.config.settings import Settings, SettingsError
from receiver.serve.exposure import is_loopback, metrics_exposure, require_protected_metrics
from tests.receiver.serve.test_serverless import http_v2_event, invoke, lambda_env

KEY = "k" * 40
TOKEN = "metrics-token-0123456789"
FIXES = ("FLUXHOOK_METRICS_TOKEN", "FLUXHOOK_API_KEYS", "127.0.0.1", "FLUXHOOK_METRICS_PUBLIC=1")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LocalHost", "::1", "[::1]"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "10.0.0.5", "192.168.1.2", "2001:db8::1",
                                  "hooks.example.com", "127.1", "localhost.example.com"])
def test_anything_else_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_the_refusal_names_both_settings_and_the_fixes() -> None:
    refusal = metrics_exposure(Settings.from_env({}), "0.0.0.0")
    assert refusal is not None and "0.0.0.0" in refusal
    for fix in FIXES:
        assert fix in refusal
    with pytest.raises(SettingsError) as info:
        require_protected_metrics(Settings.from_env({}), "::")
    assert all(fix in str(info.value) for fix in FIXES)


@pytest.mark.parametrize("env", [
    {"FLUXHOOK_METRICS_TOKEN": TOKEN},
    {"FLUXHOOK_API_KEYS": "api-key-0123456789abcdef"},
    {"FLUXHOOK_METRICS_PUBLIC": "1"},
])
def test_any_protection_or_the_explicit_opt_out_allows_a_public_address(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    assert metrics_exposure(settings, "0.0.0.0") is None
    require_protected_metrics(settings, "0.0.0.0")


def test_loopback_needs_no_protection() -> None:
    assert metrics_exposure(Settings.from_env({}), "127.0.0.1") is None


def test_a_bad_opt_out_value_is_named() -> None:
    with pytest.raises(SettingsError, match="FLUXHOOK_METRICS_PUBLIC"):
        Settings.from_env({"FLUXHOOK_METRICS_PUBLIC": "maybe"})
    assert Settings.from_env({}).metrics_public is False


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The environment `fluxhook serve` needs, and uvicorn's `run` replaced: the calls it would have made."""
    for name in ("FLUXHOOK_METRICS_TOKEN", "FLUXHOOK_API_KEYS", "FLUXHOOK_METRICS_PUBLIC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLUXHOOK_PUBLIC_URL", "https://hooks.example.com")
    monkeypatch.setenv("FLUXHOOK_SECRET_KEY", KEY)
    monkeypatch.setenv("FLUXHOOK_DB", str(tmp_path / "serve.db"))
    monkeypatch.setenv("FLUXHOOK_RESULTS", str(tmp_path / "results"))
    calls: list[dict[str, Any]] = []

    def fake_run(app: Any, settings: Settings, **overrides: Any) -> None:
        calls.append(overrides)

    monkeypatch.setattr("receiver.cli.serve.run", fake_run)
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5"])
def test_serve_on_a_public_address_without_protection_exits_2_naming_the_fix(
    served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], host: str
) -> None:
    assert main(["serve", "--host", host, "--port", "8123"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fluxhook serve: error: refusing to listen on ")
    assert all(fix in err for fix in FIXES)
    assert served == []  # nothing was served


@pytest.mark.parametrize(("argv", "env"), [
    (["serve"], {}),  # the default, 127.0.0.1
    (["serve", "--host", "localhost"], {}),
    (["serve", "--host", "0.0.0.0"], {"FLUXHOOK_METRICS_TOKEN": TOKEN}),
    (["serve", "--host", "0.0.0.0"], {"FLUXHOOK_API_KEYS": "api-key-0123456789abcdef"}),
    (["serve", "--host", "0.0.0.0"], {"FLUXHOOK_METRICS_PUBLIC": "1"}),
])
def test_serve_starts_on_loopback_or_when_protected(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 0
    (call,) = served
    assert call["host"] == (argv[2] if len(argv) > 2 else "127.0.0.1")


@pytest.mark.anyio
@pytest.mark.parametrize("extra", [{}, {"FLUXHOOK_METRICS_TOKEN": TOKEN}, {"FLUXHOOK_METRICS_PUBLIC": "1"}])
async def test_lambda_cannot_see_who_invokes_it_so_it_warns_when_metrics_are_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, extra: dict[str, str]
) -> None:
    caplog.set_level(logging.WARNING, logger="fluxhook.serverless")
    async with lambda_env(tmp_path, monkeypatch, extra=extra):
        assert (await invoke(http_v2_event("GET", "/healthz")))["statusCode"] == 200
        assert (await invoke(http_v2_event("GET", "/healthz")))["statusCode"] == 200
    warned = [r.getMessage() for r in caplog.records if r.name == "fluxhook.serverless"]
    assert warned == ([] if extra else [
        "GET /metrics is open to anyone who can invoke this function: set FLUXHOOK_METRICS_TOKEN "
        "(deploy/lambda/template.yaml) or FLUXHOOK_API_KEYS; FLUXHOOK_METRICS_PUBLIC=1 if IAM or API Gateway "
        "already keeps it private"])  # once per instance, at its start

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config.settings import Settings, SettingsError

KEY = "k" * 32


def test_defaults() -> None:
    s = Settings.from_env({"HOME": "/home/u"})
    assert s.db == "/home/u/.local/share/fluxhook/fluxhook.db"  # the same from every working directory
    assert s.results == Path("/home/u/.local/share/fluxhook/results")
    assert s.poll_after == 60 and s.poll_max_interval == 60 and s.job_deadline == 1800 and s.sweep_interval == 5
    assert s.public_url is None and s.secret_key is None
    assert s.providers["bfl"].base_url == "https://api.bfl.ai"
    assert s.providers["deerapi"].base_url == "https://api.deerapi.com"
    assert s.providers["cometapi"].base_url == "https://api.cometapi.com"
    assert s.download_hosts_for("bfl") == (
        "*.bfl.ai", "bfldeliveryprodeu4.blob.core.windows.net", "bfldeliveryprod.blob.core.windows.net"
    )  # BFL's own storage accounts only: anyone can create another *.blob.core.windows.net
    assert not s.download_allow_http and s.max_outputs == 16 and s.max_events_per_job == 100
    assert s.download_window == 3600 and s.max_header_bytes == 16384 and s.header_timeout == 10
    assert s.max_connections == 512 and s.idle_timeout == 5
    assert s.cap_for("bfl", "flux-kontext-max") == 6 and s.cap_for("bfl", "flux-dev") == 24


def test_everything_is_read() -> None:
    s = Settings.from_env({
        "FLUXHOOK_PUBLIC_URL": "https://hooks.example.com/base/",
        "FLUXHOOK_DB": "/var/lib/fluxhook/db.sqlite",
        "FLUXHOOK_RESULTS": "/srv/results",
        "FLUXHOOK_SECRET_KEY": KEY,
        "BFL_API_KEY": "bfl-key",
        "DEERAPI_KEY": "deer-key",
        "COMETAPI_KEY": "comet-key",
        "FLUXHOOK_BFL_URL": "https://api.eu.bfl.ai",
        "FLUXHOOK_DEERAPI_URL": "https://deer.example",
        "FLUXHOOK_COMETAPI_URL": "https://comet.example",
        "FLUXHOOK_DOWNLOAD_HOSTS": "cdn.example.com, *.bfl.ai",
        "FLUXHOOK_POLL_AFTER": "20",
        "FLUXHOOK_POLL_MAX_INTERVAL": "30",
        "FLUXHOOK_JOB_DEADLINE": "600",
        "FLUXHOOK_SWEEP_INTERVAL": "2.5",
        "FLUXHOOK_BFL_MAX_ACTIVE": "10",
    })
    assert s.public_url == "https://hooks.example.com/base"
    assert s.secret_key == KEY.encode()
    assert s.providers["bfl"].api_key == "bfl-key" and s.providers["bfl"].base_url == "https://api.eu.bfl.ai"
    assert s.providers["cometapi"].api_key == "comet-key"
    assert s.download_hosts == ("cdn.example.com", "*.bfl.ai")
    assert (s.poll_after, s.poll_max_interval, s.job_deadline, s.sweep_interval) == (20, 30, 600, 2.5)
    assert s.cap_for("bfl", "flux-dev") == 10 and s.cap_for("bfl", "flux-kontext-max") == 6
    assert KEY not in repr(s) and "bfl-key" not in repr(s) and "bfl-key" not in repr(s.providers)


@pytest.mark.parametrize(("env", "variable"), [
    ({"FLUXHOOK_PUBLIC_URL": "http://hooks.example.com"}, "FLUXHOOK_PUBLIC_URL"),
    ({"FLUXHOOK_PUBLIC_URL": "hooks.example.com"}, "FLUXHOOK_PUBLIC_URL"),
    ({"FLUXHOOK_PUBLIC_URL": "https://h.example/?x=1"}, "FLUXHOOK_PUBLIC_URL"),
    ({"FLUXHOOK_ALLOW_HTTP": "maybe"}, "FLUXHOOK_ALLOW_HTTP"),
    ({"FLUXHOOK_SECRET_KEY": "short"}, "FLUXHOOK_SECRET_KEY"),
    ({"FLUXHOOK_POLL_AFTER": "soon"}, "FLUXHOOK_POLL_AFTER"),
    ({"FLUXHOOK_JOB_DEADLINE": "-1"}, "FLUXHOOK_JOB_DEADLINE"),
    ({"FLUXHOOK_BFL_URL": "ftp://x"}, "FLUXHOOK_BFL_URL"),
    ({"FLUXHOOK_BFL_MAX_ACTIVE": "2.5"}, "FLUXHOOK_BFL_MAX_ACTIVE"),
])
def test_bad_values_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_http_public_url_needs_the_explicit_switch() -> None:
    s = Settings.from_env({"FLUXHOOK_PUBLIC_URL": "http://127.0.0.1:8000", "FLUXHOOK_ALLOW_HTTP": "1"})
    assert s.public_url == "http://127.0.0.1:8000"


def test_secret_value_never_in_errors() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FLUXHOOK_SECRET_KEY": "tiny-secret"})
    assert "tiny-secret" not in str(info.value)


def test_require_public() -> None:
    with pytest.raises(SettingsError, match="FLUXHOOK_SECRET_KEY"):
        Settings.from_env({"FLUXHOOK_PUBLIC_URL": "https://h.example"}).require_public()
    with pytest.raises(SettingsError, match="FLUXHOOK_PUBLIC_URL"):
        Settings.from_env({"FLUXHOOK_SECRET_KEY": KEY}).require_public()


def test_the_example_file_s_placeholder_key_is_refused() -> None:
    example = Path(__file__).resolve().parents[3] / "deploy" / "fluxhook.env.example"
    line = next(x for x in example.read_text().splitlines() if x.startswith("FLUXHOOK_SECRET_KEY="))
    with pytest.raises(SettingsError, match="placeholder"):
        Settings.from_env({"FLUXHOOK_SECRET_KEY": line.split("=", 1)[1]})

"""The providers' part of the environment: each dialect's base URL, API key and active-job cap, the master
key and Replicate's signing secrets, read for :meth:`Settings.from_env <receiver.config.settings.Settings.from_env>`;
a bad value is a SettingsError naming its variable."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from receiver.config.env import SettingsError, standard_secret_ok, whole
from receiver.config.variables import max_active_variable
from submitter.dialects import DIALECTS
from submitter.provider import Provider

__all__ = ["master_key", "providers", "replicate_secrets"]

_GENERATE = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


def master_key(env: Mapping[str, str]) -> str | None:
    """FLUXHOOK_SECRET_KEY: at least 32 characters, never the example file's placeholder."""
    secret = env.get("FLUXHOOK_SECRET_KEY") or None
    if secret is not None and "change-me" in secret.lower():
        raise SettingsError(f"FLUXHOOK_SECRET_KEY is still the placeholder from the example file; generate one with "
                            f"{_GENERATE}")
    if secret is not None and len(secret) < 32:
        raise SettingsError(f"FLUXHOOK_SECRET_KEY must be at least 32 characters; generate one with {_GENERATE}")
    return secret


def providers(env: Mapping[str, str]) -> tuple[dict[str, Provider], dict[str, int]]:
    """Every dialect as configured (its URL and key variables), and the active-job caps that are set."""
    found: dict[str, Provider] = {}
    max_active: dict[str, int] = {}
    for name, dialect in DIALECTS.items():
        base = env.get(dialect.url_env) or dialect.base_url
        if urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).hostname:
            raise SettingsError(f"{dialect.url_env} must be an http(s) URL, got {base!r}")
        found[name] = Provider(dialect, base.rstrip("/"), env.get(dialect.key_env) or None)
        cap_var = max_active_variable(name)
        if cap_var in env:
            max_active[name] = whole(env, cap_var, 0)
    return found, max_active


def replicate_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """REPLICATE_WEBHOOK_SECRET: comma-separated whsec_ secrets (several during a rotation)."""
    secrets = tuple(x.strip() for x in (env.get("REPLICATE_WEBHOOK_SECRET") or "").split(",") if x.strip())
    for position, value in enumerate(secrets, 1):
        if not standard_secret_ok(value):
            raise SettingsError(f"REPLICATE_WEBHOOK_SECRET: secret #{position} is not a whsec_<base64> signing secret")
    return secrets

"""Typed readers of FLUXHOOK_* environment variables, each bad value a SettingsError naming its variable
(receiver/config/settings.py and receiver/config/integrations.py read the environment with them)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

__all__ = [
    "FAILPOINTS", "SettingsError", "boolean", "check_public_url", "count", "endpoint", "failpoints", "log_format",
    "metrics_token", "networks", "number", "positive", "results_folder", "results_url", "standard_secret_ok",
    "sweep_token", "whole",
]

N = TypeVar("N", int, float)


class SettingsError(Exception):
    """A bad environment variable; the message names it."""


def check_public_url(url: str, allow_http: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"FLUXHOOK_PUBLIC_URL must be an absolute URL, got {url!r}")
    if parts.scheme == "http" and not allow_http:
        raise SettingsError("FLUXHOOK_PUBLIC_URL must use https (set FLUXHOOK_ALLOW_HTTP=1 for local testing)")
    if parts.query or parts.fragment:
        raise SettingsError("FLUXHOOK_PUBLIC_URL must not have a query or fragment")
    return url.rstrip("/")


def standard_secret_ok(value: str) -> bool:
    raw = value.removeprefix("whsec_")
    try:
        return len(base64.b64decode(raw, validate=True)) >= 16
    except (binascii.Error, ValueError):
        return False


FAILPOINTS = frozenset({
    "after-ledger", "before-submit-recorded", "after-callback-commit", "mid-download", "mid-sweep",
})


def failpoints(value: str) -> frozenset[str]:
    points = frozenset(p.strip() for p in value.split(",") if p.strip())
    if points - FAILPOINTS:
        raise SettingsError(
            f"FLUXHOOK_FAILPOINTS: unknown point(s) {', '.join(sorted(points - FAILPOINTS))};"
            f" known: {', '.join(sorted(FAILPOINTS))}"
        )
    return points


def positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = float(number(env, name, default))
    if value <= 0:
        raise SettingsError(f"{name} must be greater than 0")
    return value


def sweep_token(value: str | None) -> str | None:
    if value is not None and len(value) < 32:
        raise SettingsError("FLUXHOOK_SWEEP_TOKEN must be at least 32 characters")
    return value


def log_format(value: str) -> str:
    if value.strip().lower() not in ("text", "json"):
        raise SettingsError(f"FLUXHOOK_LOG_FORMAT must be text or json, got {value!r}")
    return value.strip().lower()


def metrics_token(value: str | None) -> str | None:
    if value is not None and len(value) < 16:
        raise SettingsError("FLUXHOOK_METRICS_TOKEN must be at least 16 characters")
    return value


def networks(value: str) -> tuple[str, ...]:
    found = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(
                f"FLUXHOOK_FORWARDED_ALLOW_IPS: {item!r} is not an IP address or network"
            ) from None
        found.append(item)
    return tuple(found)


def results_url(value: str | None) -> str | None:
    """FLUXHOOK_RESULTS as an object-store URL (`s3://bucket[/prefix]`), or None for a local folder."""
    if not value or "://" not in value:
        return None
    parts = urlsplit(value)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise SettingsError(f"FLUXHOOK_RESULTS must be a folder or s3://bucket[/prefix], got {value!r}")
    return f"s3://{parts.netloc}{parts.path.rstrip('/')}"


def results_folder(value: str | None) -> Path:
    return Path("./results") if not value or results_url(value) else Path(value)


def endpoint(value: str | None) -> str | None:
    if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
        raise SettingsError(f"FLUXHOOK_S3_ENDPOINT must be an http(s) URL, got {value!r}")
    return value.rstrip("/") if value else None


def count(env: Mapping[str, str], name: str, default: int) -> int:
    value = whole(env, name, default)
    if value < 1:
        raise SettingsError(f"{name} must be at least 1")
    return value


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/0/true/false, got {value!r}")


def number(env: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number (default when unset or empty)."""
    return _non_negative(env, name, default, float)


def whole(env: Mapping[str, str], name: str, default: int) -> int:
    """A non-negative whole number (default when unset or empty)."""
    return _non_negative(env, name, default, int)


def _non_negative(env: Mapping[str, str], name: str, default: N, kind: Callable[[str], N]) -> N:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        parsed = kind(value)
    except ValueError:
        raise SettingsError(f"{name} must be a {'whole ' if kind is int else ''}number, got {value!r}") from None
    if parsed < 0:
        raise SettingsError(f"{name} must not be negative, got {value!r}")
    return parsed

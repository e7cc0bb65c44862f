"""Whether the receiver may listen where it is asked to: `fluxhook serve` on an address other than
loopback refuses to start while GET /metrics would answer anyone (neither FLUXHOOK_API_KEYS nor
FLUXHOOK_METRICS_TOKEN set), unless FLUXHOOK_METRICS_PUBLIC=1 says a proxy or the network protects it.

Only `fluxhook serve` knows its address (`--host`). Under `uvicorn --factory` and on AWS Lambda the
app cannot tell who reaches it: there the deploy recipes set FLUXHOOK_METRICS_TOKEN (deploy/).
"""

from __future__ import annotations

import ipaddress

from receiver.config.settings import Settings, SettingsError

__all__ = ["is_loopback", "metrics_exposure", "require_protected_metrics"]


def is_loopback(host: str) -> bool:
    """Whether only this machine can connect to `host`: `localhost`, 127.0.0.0/8, ::1. Anything else
    (0.0.0.0, ::, an interface's address, a host name that could resolve anywhere) is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def metrics_exposure(settings: Settings, host: str) -> str | None:
    """Why listening on `host` with `settings` is refused, or None when it is fine."""
    if is_loopback(host) or settings.metrics_protected or settings.metrics_public:
        return None
    return (f"refusing to listen on {host or '(all interfaces)'} with GET /metrics open to anyone who can reach it: "
            "set FLUXHOOK_METRICS_TOKEN (a bearer token of 16+ characters, for /metrics only) or FLUXHOOK_API_KEYS, "
            "or listen on 127.0.0.1 (--host 127.0.0.1, the default) behind a proxy; if a proxy or the network "
            "already keeps /metrics private, set FLUXHOOK_METRICS_PUBLIC=1")


def require_protected_metrics(settings: Settings, host: str) -> None:
    """Raise SettingsError (the message names the settings and the fixes) when `host` is refused."""
    refusal = metrics_exposure(settings, host)
    if refusal is not None:
        raise SettingsError(refusal)

"""Host name allow-lists: `*.bfl.ai` matches subdomains of bfl.ai (not bfl.ai itself), `*` any host."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["host_allowed"]


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """True if `host` matches one of the allow-list `patterns` (case-insensitive)."""
    host = host.strip("[]").rstrip(".").lower()
    if not host:
        return False
    for pattern in (p.strip().rstrip(".").lower() for p in patterns):
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False

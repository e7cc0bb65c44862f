"""Host name patterns: `*.bfl.ai` matches subdomains of bfl.ai, `*` matches any host."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["host_allowed"]


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False

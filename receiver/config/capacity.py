"""How the connection cap (FLUXHOOK_MAX_CONNECTIONS) is shared: event streams and long-polls, and the
connections only provider callbacks may use.

- FLUXHOOK_MAX_STREAMS: `/v1/events` and `/ui/events` streams plus `?wait=` long-polls open at once
  (default a quarter of the connection cap); FLUXHOOK_MAX_STREAMS_PER_KEY: of those, per API key
  (default 16, or the total if lower). One more is answered 429 (receiver/web/streams.py).
- FLUXHOOK_HOOKS_RESERVED: connections that requests other than `/hooks/...` (and the health probes)
  may not use (default a tenth of the connection cap, at least 1); one more such request is answered
  503 (receiver/serve/capacity.py).

Unset values are derived from the connection cap when asked for, so a Settings whose cap was
changed (tests, `with_overrides`) derives them from the new cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from receiver.config.env import SettingsError, count

__all__ = ["Capacity", "capacity", "optional_count"]

STREAMS_PER_KEY = 16


@dataclass(frozen=True)
class Capacity:
    max_streams: int
    max_streams_per_key: int
    hooks_reserved: int


def capacity(max_connections: int, max_streams: int | None = None, per_key: int | None = None,
             hooks_reserved: int | None = None) -> Capacity:
    """The caps for `max_connections`, each None derived from it; SettingsError naming the variables
    when they do not fit: per key <= total <= connections - reserved, 1 <= reserved < connections."""
    reserved = max(1, max_connections // 10) if hooks_reserved is None else hooks_reserved
    if not 1 <= reserved < max_connections:
        raise SettingsError(
            f"FLUXHOOK_HOOKS_RESERVED ({reserved}) must be at least 1 and below FLUXHOOK_MAX_CONNECTIONS"
            f" ({max_connections}): lower FLUXHOOK_HOOKS_RESERVED or raise FLUXHOOK_MAX_CONNECTIONS")
    total = max(1, max_connections // 4) if max_streams is None else max_streams
    if not 1 <= total <= max_connections - reserved:
        raise SettingsError(
            f"FLUXHOOK_MAX_STREAMS ({total}) must be at least 1 and at most FLUXHOOK_MAX_CONNECTIONS"
            f" ({max_connections}) minus FLUXHOOK_HOOKS_RESERVED ({reserved}): lower FLUXHOOK_MAX_STREAMS"
            f" or raise FLUXHOOK_MAX_CONNECTIONS")
    mine = min(STREAMS_PER_KEY, total) if per_key is None else per_key
    if not 1 <= mine <= total:
        raise SettingsError(
            f"FLUXHOOK_MAX_STREAMS_PER_KEY ({mine}) must be at least 1 and at most FLUXHOOK_MAX_STREAMS"
            f" ({total}): lower FLUXHOOK_MAX_STREAMS_PER_KEY or raise FLUXHOOK_MAX_STREAMS")
    return Capacity(total, mine, reserved)


def optional_count(env: Mapping[str, str], name: str) -> int | None:
    """A whole number of at least 1, or None when unset or empty (derived later)."""
    return count(env, name, 1) if env.get(name) else None

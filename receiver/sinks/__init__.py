"""Event sinks: where fluxhook pushes outbox events (at least once).

The relay (:mod:`receiver.engine.relay`) leases deliveries from the durable outbox, calls
``await sink.deliver(event)`` and records the :class:`Attempt` it gets back; retrying,
backing off and giving up are the relay's decisions, made from the Attempt alone.

Every kind of sink is data behind one interface: :data:`SINK_KINDS` maps a kind to a
factory ``(settings, http) -> list[Sink]``, and :func:`sinks_from_settings` runs them all.
A sink's ``name`` (stored in the database) and ``display`` (shown to people) never hold a
secret; neither does any error text an Attempt or a SinkError carries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from receiver.sinks.base import Attempt, Sink, SinkError, SinkFactory

if TYPE_CHECKING:
    import httpx

    from receiver.config.settings import Settings

__all__ = ["SINK_KINDS", "Attempt", "Sink", "SinkError", "SinkFactory", "sinks_from_settings"]


# -- the registry -----------------------------------------------------------------


def _webhooks(settings: Settings, http: httpx.AsyncClient | None) -> list[Sink]:
    integrations = settings.integrations
    if not integrations.forward_urls:
        return []
    # Deferred for cold start: the webhook sink loads httpx, anyio and importlib.metadata (~0.1 s),
    # which a process that forwards nothing never needs.
    from receiver.sinks.webhook import webhook_sinks

    return list(webhook_sinks(integrations, http))


def _optional(module: str, name: str, setting: str, extra: str) -> Any:
    """`name` from the sink module `module`, or a SinkError naming the setting and the extra to install."""
    try:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ImportError as exc:
        raise SinkError(f"{setting} is set but its client library is not installed:"
                        f" pip install 'fluxhook[{extra}]'") from exc


def _redis(settings: Settings, http: httpx.AsyncClient | None) -> list[Sink]:
    i = settings.integrations
    if not i.redis_url:
        return []
    return [_optional("redis_streams", "RedisSink", "FLUXHOOK_REDIS_URL", "redis")(
        i.redis_url, i.redis_stream, i.redis_maxlen)]


def _nats(settings: Settings, http: httpx.AsyncClient | None) -> list[Sink]:
    i = settings.integrations
    if not i.nats_url:
        return []
    return [_optional("jetstream", "NatsSink", "FLUXHOOK_NATS_URL", "nats")(i.nats_url, i.nats_subject)]


#: Every kind of sink: (kind, factory). A new kind is one more row.
SINK_KINDS: tuple[tuple[str, SinkFactory], ...] = (
    ("webhook", _webhooks),
    ("redis", _redis),
    ("nats", _nats),
)


def sinks_from_settings(settings: Settings, *, http: httpx.AsyncClient | None = None) -> list[Sink]:
    """Every sink the settings configure (not started): one per forward URL, Redis, NATS."""
    found: list[Sink] = []
    for _kind, factory in SINK_KINDS:
        found.extend(factory(settings, http))
    return found

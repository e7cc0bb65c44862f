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

import hashlib
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from submitter.redaction import scrub

if TYPE_CHECKING:
    import httpx

    from receiver.config.settings import Settings
    from receiver.store import OutboxEvent

__all__ = ["SINK_KINDS", "Attempt", "Sink", "SinkError", "SinkFactory", "sinks_from_settings"]


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt, as the relay records it."""

    #: Delivered (webhook 2xx / XADD returned an id / JetStream PubAck).
    ok: bool
    #: HTTP status when there is one.
    code: int | None = None
    latency_ms: float = 0.0
    #: Short, secret-free text ("HTTP 503", "connect timeout", ...).
    error: str | None = None
    #: Seconds the endpoint asked for (Retry-After), capped.
    retry_after: float | None = None
    #: Do not retry this delivery (webhook 3xx, 4xx other than 408/410/425/429).
    permanent: bool = False
    #: 410 Gone: the relay disables this sink until it is re-enabled.
    gone: bool = False


class SinkError(Exception):
    """A sink cannot start (bad config, no JetStream stream for the subject...); names the problem and the setting."""


class Sink(Protocol):
    kind: str
    #: Stable id stored in the database ("webhook:<hash>", ...); never a secret.
    name: str
    #: For people: a URL without userinfo or query, "redis stream ... at host:port", ...
    display: str
    #: The event types this sink takes.
    types: frozenset[str]

    async def start(self) -> None: ...

    async def deliver(self, event: OutboxEvent) -> Attempt: ...

    async def close(self) -> None: ...


SinkFactory = Callable[["Settings", "httpx.AsyncClient | None"], "list[Sink]"]


def short_hash(*parts: str) -> str:
    """12 hex digits identifying a configuration (a secret inside is not recoverable from it)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be secret: the URL itself, its userinfo, password and query."""
    parts = urlsplit(url)
    found = [url]
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        found.append(userinfo)
        user, colon, password = userinfo.partition(":")
        found += [unquote(password), password] if colon else [unquote(user), user]
    if parts.query:
        found.append(parts.query)
    return sorted({s for s in found if s}, key=len, reverse=True)


def host_port(url: str, default_port: int) -> str:
    """`host:port` of a URL (no userinfo), or its path for unix sockets."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "unix socket"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return f"{host}:{port}"


def describe(exc: BaseException, secrets: Iterable[str] = (), limit: int = 200) -> str:
    """Short text of an exception, scrubbed of `secrets` and anything credential-shaped."""
    text = str(exc).strip() or type(exc).__name__
    text = scrub(text, secrets)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the registry -----------------------------------------------------------------


def _webhooks(settings: Settings, http: httpx.AsyncClient | None) -> list[Sink]:
    integrations = settings.integrations
    if not integrations.forward_urls:
        return []
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

"""What every event sink shares: the :class:`Sink` interface, the :class:`Attempt` it returns, the
:class:`SinkError` it raises when it cannot start, and the helpers sinks use to name themselves and to
describe failures without a secret (see :mod:`receiver.sinks` for the registry of kinds)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from submitter.redaction import scrub

if TYPE_CHECKING:
    import httpx

    from receiver.config.settings import Settings
    from receiver.store import OutboxEvent

__all__ = ["Attempt", "Sink", "SinkError", "SinkFactory", "describe", "host_port", "short_hash", "url_secrets"]


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

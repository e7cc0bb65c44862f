"""NATS JetStream: publish each event's envelope JSON to FLUXHOOK_NATS_SUBJECT, with ``Nats-Msg-Id`` = event id.

A publish counts once JetStream acknowledges it (PubAck), so the event is stored in a stream;
the ``Nats-Msg-Id`` header lets JetStream drop a repeat within its duplicate window. The stream
itself is the operator's (retention, replicas): start() checks one covers the subject.

The connection does not reconnect in the background (a dead server must not buffer events
the relay believes are in flight); a deliver() after a disconnect reconnects first.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import nats
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from receiver.config.integrations import EVENT_TYPES
from receiver.sinks.base import Attempt, SinkError, describe, host_port, short_hash, url_secrets

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from receiver.store import OutboxEvent

__all__ = ["NatsSink"]

#: Seconds a connect, or one publish waiting for its PubAck, may take.
TIMEOUT = 10.0



class NatsSink:
    kind = "nats"

    def __init__(self, url: str, subject: str, *, timeout: float = TIMEOUT) -> None:
        self._servers = [u.strip() for u in url.split(",") if u.strip()]
        self.subject = subject
        self.name = "nats:" + short_hash(url, subject)
        where = ", ".join(host_port(u, 4222) for u in self._servers)
        self.display = f"nats subject {subject} at {where}"
        self.types = frozenset(EVENT_TYPES)
        self._timeout = timeout
        self._secrets = sorted({s for u in self._servers for s in url_secrets(u)} | {url}, key=len, reverse=True)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        #: When the last connect failed, and why (fail fast for a moment after it).
        self._failed: tuple[float, str] | None = None

    def __repr__(self) -> str:
        return f"NatsSink({self.display!r})"

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = describe(exc, self._secrets)

    async def _connect(self) -> JetStreamContext:
        """A live JetStream context, connecting (once, quickly: no endless retry loop) if there is none."""
        async with self._lock:
            if self._nc is not None and self._js is not None and self._nc.is_connected:
                return self._js
            if self._failed is not None and time.monotonic() - self._failed[0] < self._timeout:
                # A connect just failed (maybe while this caller waited for the lock): fail fast rather
                # than queue one more connect timeout behind it; the relay's backoff retries later.
                raise _Unreachable(self._failed[1])
            await self._drop()
            self._last_error = None
            options: dict[str, Any] = {
                "servers": self._servers, "connect_timeout": self._timeout, "allow_reconnect": False,
                "max_reconnect_attempts": 1, "reconnect_time_wait": 0.1, "error_cb": self._on_error,
                "name": "fluxhook",
            }
            try:
                nc = await nats.connect(**options)
            except (NatsError, OSError) as exc:
                cause = self._last_error or describe(exc, self._secrets)
                message = f"cannot connect to NATS at {self._where()}: {cause}"
                self._failed = (time.monotonic(), message)
                raise _Unreachable(message) from None
            self._failed = None
            self._nc, self._js = nc, nc.jetstream(timeout=self._timeout)
            return self._js

    def _where(self) -> str:
        return ", ".join(host_port(u, 4222) for u in self._servers)

    async def start(self) -> None:
        try:
            js = await self._connect()
            await js.find_stream_name_by_subject(self.subject)
        except _Unreachable as exc:
            raise SinkError(f"{exc} (FLUXHOOK_NATS_URL)") from None
        except NotFoundError:
            await self.close()
            raise SinkError(
                f"no JetStream stream covers subject {self.subject!r} (FLUXHOOK_NATS_SUBJECT): create one, e.g."
                f" `nats stream add FLUXHOOK --subjects '{_wildcard(self.subject)}'`"
            ) from None
        except (NatsError, OSError) as exc:
            await self.close()
            raise SinkError(f"NATS at {self._where()} (FLUXHOOK_NATS_URL) does not answer JetStream requests"
                            f" (is JetStream enabled? nats-server -js): {describe(exc, self._secrets)}") from None

    async def deliver(self, event: OutboxEvent) -> Attempt:
        began = time.perf_counter()
        try:
            js = await self._connect()
            await js.publish(self.subject, event.body(), headers={"Nats-Msg-Id": event.id}, timeout=self._timeout)
        except _Unreachable as exc:
            return Attempt(ok=False, latency_ms=_ms(began), error=str(exc))
        except (NatsError, OSError) as exc:
            return Attempt(ok=False, latency_ms=_ms(began),
                           error=f"nats {type(exc).__name__}: {describe(exc, self._secrets)}")
        # ack.duplicate: JetStream already holds this message id (a repeat) - delivered all the same.
        return Attempt(ok=True, latency_ms=_ms(began))

    async def _drop(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (NatsError, OSError):
                pass

    async def close(self) -> None:
        await self._drop()


class _Unreachable(Exception):
    pass


def _wildcard(subject: str) -> str:
    head = subject.split(".", 1)[0]
    return f"{head}.>" if "." in subject else subject


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000.0

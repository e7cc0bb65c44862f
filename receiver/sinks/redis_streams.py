"""Redis Streams: XADD each event to FLUXHOOK_REDIS_STREAM (fields id, type, data = the envelope JSON).

The stream is trimmed with ``MAXLEN ~ FLUXHOOK_REDIS_MAXLEN``. Consumers read it with XREAD or
consumer groups and deduplicate by the ``id`` field (delivery is at least once).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from receiver.config.integrations import EVENT_TYPES
from receiver.sinks.base import Attempt, SinkError, describe, host_port, short_hash, url_secrets

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

    from receiver.store import OutboxEvent

__all__ = ["RedisSink"]

#: Seconds a connect or one command may take.
TIMEOUT = 10.0



class RedisSink:
    kind = "redis"

    def __init__(self, url: str, stream: str, maxlen: int, *, timeout: float = TIMEOUT) -> None:
        self._url = url
        self.stream = stream
        self.maxlen = maxlen
        self.name = "redis:" + short_hash(url, stream)
        self.display = f"redis stream {stream} at {host_port(url, 6379)}"
        self.types = frozenset(EVENT_TYPES)
        self._timeout = timeout
        self._secrets = url_secrets(url)
        self._client: aioredis.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisSink({self.display!r})"

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout,
                # A connection the server dropped (restart, idle timeout) is replaced at once, once; anything
                # else is the relay's to retry. A repeat is possible, as with any at-least-once delivery.
                retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError], client_name="fluxhook",
            )
        return self._client

    async def start(self) -> None:
        try:
            await self._connect().ping()
        except (RedisError, OSError, ValueError) as exc:
            await self.close()
            raise SinkError(f"cannot reach Redis at {host_port(self._url, 6379)} (FLUXHOOK_REDIS_URL): "
                            f"{describe(exc, self._secrets)}") from None

    async def deliver(self, event: OutboxEvent) -> Attempt:
        began = time.perf_counter()
        fields: dict[FieldT, EncodableT] = {"id": event.id, "type": event.type, "data": event.body()}
        try:
            entry = await self._connect().xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        except (RedisError, OSError, ValueError) as exc:
            # The connection pool reconnects by itself on the next command.
            return Attempt(ok=False, latency_ms=_ms(began),
                           error=f"redis {type(exc).__name__}: {describe(exc, self._secrets)}")
        if entry is None:
            return Attempt(ok=False, latency_ms=_ms(began), error="redis XADD returned no entry id")
        return Attempt(ok=True, latency_ms=_ms(began))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _ms(began: float) -> float:
    return (time.perf_counter() - began) * 1000.0

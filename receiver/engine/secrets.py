"""Webhook signing secrets that belong to a provider account (Replicate's `whsec_...`).

Configured secrets (REPLICATE_WEBHOOK_SECRET, comma-separated during a
rotation) are used as they are. Otherwise the secret is fetched once from the
provider's API and cached; after a signature failure it is fetched again, at
most once per `min_refresh` seconds, so a rotation is picked up without
letting forged requests hammer the provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from submitter.provider import Provider

if TYPE_CHECKING:
    import httpx

__all__ = ["SecretUnavailable", "WebhookSecrets"]

class SecretUnavailable(Exception):
    """The signing secret cannot be fetched now: answer 503 so the sender retries."""


@dataclass
class WebhookSecrets:
    api: httpx.AsyncClient
    configured: tuple[str, ...]
    clock: Callable[[], float]
    min_refresh: float = 60.0
    _cache: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _fetched_at: dict[str, float] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, provider: Provider) -> tuple[str, ...]:
        if self.configured:
            return self.configured
        if provider.name not in self._cache:
            await self._fetch(provider)
        return self._cache.get(provider.name, ())

    async def refresh(self, provider: Provider) -> bool:
        """Fetch again after a failed check; False if configured or fetched too recently."""
        if self.configured:
            return False
        last = self._fetched_at.get(provider.name)
        if last is not None and self.clock() - last < self.min_refresh:
            return False
        before = self._cache.get(provider.name)
        await self._fetch(provider)
        return self._cache.get(provider.name) != before

    async def _fetch(self, provider: Provider) -> None:
        async with self._lock:
            last = self._fetched_at.get(provider.name)
            if provider.name in self._cache and last is not None and self.clock() - last < self.min_refresh:
                return  # fetched by someone else meanwhile
            path = provider.dialect.secret_path
            if not provider.api_key or path is None:
                raise SecretUnavailable(
                    f"no signing secret for {provider.name}: set REPLICATE_WEBHOOK_SECRET or {provider.dialect.key_env}"
                )
            self._fetched_at[provider.name] = self.clock()
            import httpx  # with the client that fetches (the callback path does not load it otherwise)

            try:
                response = await self.api.get(
                    provider.base_url + path, headers=provider.dialect.auth_headers(provider.api_key)
                )
                key = response.json().get("key") if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                key = None
            if not isinstance(key, str) or not key.startswith("whsec_"):
                raise SecretUnavailable(f"could not fetch the {provider.name} webhook signing secret")
            self._cache[provider.name] = (key,)

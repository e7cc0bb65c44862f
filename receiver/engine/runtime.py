"""Everything a running fluxhook needs, opened once: settings, store, HTTP clients, clock.

The web app, the sweep and the CLI all take a :class:`Runtime`; tests build one
with in-process transports and a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx

from receiver.config.settings import Settings
from receiver.engine.feed import EventFeed
from receiver.engine.links import EventLinks
from receiver.engine.refusals import NoteGate
from receiver.engine.relay import Relay
from receiver.engine.secrets import WebhookSecrets
from receiver.errors import Unavailable
from receiver.fetch.transport import FetchTransport
from receiver.obs.logs import LogLimiter
from receiver.obs.metrics import Metrics
from receiver.obs.redaction import Redactor
from receiver.results import ResultStore
from receiver.results import from_settings as results_from_settings
from receiver.sinks import Sink, sinks_from_settings
from receiver.store import Store, open_store, schema_behind
from receiver.store.redacting import RedactingStore
from submitter.backoff import RetryPolicy
from submitter.client import ProviderClient

__all__ = ["STORAGE_LOG_EVERY", "Runtime"]


#: Seconds between two log lines about the same result-store failure (Runtime.storage_log).
STORAGE_LOG_EVERY = 600.0


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _OnFirstRequest(httpx.AsyncBaseTransport):
    """httpx's own transport with these options, built when the first request goes out.

    Building it imports httpcore and loads the CA bundle, which takes longer than the rest of
    start-up; a process that has only answered callbacks and /healthz so far has not needed it."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._transport: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport(**self._options)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


@dataclass
class Runtime:
    settings: Settings
    store: Store
    #: Client for provider APIs (credentials are added per request, never as defaults).
    api: httpx.AsyncClient
    #: Plain client for result downloads: never carries credentials.
    cdn: httpx.AsyncClient
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    retry: RetryPolicy = RetryPolicy()
    resolver: Callable[[str], Awaitable[list[str]]] | None = None
    owner: str = field(default_factory=_owner)
    #: Set when a callback reported results: wakes the in-process download loop.
    downloads_due: asyncio.Event = field(default_factory=asyncio.Event)
    #: Callback outcomes since start: accepted, duplicate, rejected, bad_body.
    metrics: Counter[str] = field(default_factory=Counter)
    webhook_secrets: WebhookSecrets = field(init=False)
    #: Set on shutdown: background work stops taking new jobs.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Jobs the sweep is working on now, by what it does (submit, poll, download): what a shutdown waits for.
    at_work: Counter[str] = field(default_factory=Counter)
    #: Where result files go (FLUXHOOK_RESULTS): a local folder or an object store.
    results: ResultStore = field(default=None)  # type: ignore[assignment]  # set in __post_init__

    #: Removes every secret fluxhook knows from text it stores, logs or shows.
    redactor: Redactor = field(init=False)
    #: Set when a job is due for submission now (an API create): wakes the in-process sweep loop.
    submits_due: asyncio.Event = field(default_factory=asyncio.Event)
    #: The outbox as a live feed (SSE, long-polls, the relay wait on it).
    feed: EventFeed = field(init=False)
    #: Carries outbox events to the configured sinks (webhooks out, Redis Streams, NATS).
    relay: Relay = field(init=False)
    #: Rate limit on log lines a caller can provoke (refused callbacks): forged floods do not fill the disk.
    log_limiter: LogLimiter = field(init=False)
    #: The result store failing (a bucket that does not exist, a folder that is not writable) fails every job
    #: alike: each cause is logged once per STORAGE_LOG_EVERY seconds, then how many more there were.
    storage_log: LogLimiter = field(init=False)
    #: Which refused callbacks may put a note on their job (receiver/engine/refusals.py).
    note_gate: NoteGate = field(init=False)

    def __post_init__(self) -> None:
        if self.results is None:
            self.results = results_from_settings(self.settings)
        self.redactor = Redactor.from_settings(self.settings)
        if not isinstance(self.store, RedactingStore):
            self.store = RedactingStore(self.store, self.redactor)
        self.webhook_secrets = WebhookSecrets(self.api, self.settings.replicate_webhook_secrets, self.clock)
        # Events show where files are stored; a status change made here wakes the feed at once.
        self.store.set_locator(self.results.location)
        self.feed = EventFeed(self.store)
        self.store.add_listener(self.feed.poke)
        self.relay = self.relay_to(sinks_from_settings(self.settings))
        self.log_limiter = LogLimiter(logging.getLogger("fluxhook.hooks"), self.clock,
                                      on_suppressed=lambda n: self.prom.rejected_logs_suppressed.inc(n))
        self.storage_log = LogLimiter(logging.getLogger("fluxhook.sweep"), self.clock, limit=1,
                                      window=STORAGE_LOG_EVERY)
        self.note_gate = NoteGate(self.clock)

    @cached_property
    def prom(self) -> Metrics:
        """Prometheus metrics of this runtime (GET /metrics): its own registry, never the global one.
        Made when first counted in (prometheus_client is imported then): /healthz never needs it. The
        providers with an API key and the configured sinks have every series at zero from the start."""
        providers = [p.name for p in self.settings.providers.values() if p.api_key]
        return Metrics(providers=providers, sinks=[sink.name for sink in self.relay.sinks.values()])

    def relay_to(self, sinks: Sequence[Sink]) -> Relay:
        """A relay of this runtime's outbox to `sinks` (the runtime's own is `relay`: the configured sinks)."""
        links = EventLinks(results=self.results, store=self.store, clock=self.clock,
                           ttl=self.settings.integrations.event_link_ttl, public_url=self.settings.public_url,
                           secret_key=self.settings.secret_key)
        return Relay(sinks, store=self.store, owner=self.owner, clock=self.clock,
                     integrations=self.settings.integrations,
                     on_delivery=lambda sink, outcome: self.prom.delivery(sink, outcome), links=links.add)

    async def idle(self, wake: Awaitable[Any], within: float) -> None:
        """Wait until `wake` completes, shutdown begins, or `within` seconds pass (what every
        background loop does between passes)."""
        woken = asyncio.ensure_future(wake)
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({woken, stopping}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            stopping.cancel()

    def wake_sweep(self) -> None:
        """A job is due now (an API create): the in-process sweep loop looks at once."""
        self.submits_due.set()

    def client(self, provider: str) -> ProviderClient:
        return ProviderClient(
            self.api, self.settings.provider(provider), policy=self.retry, sleep=self.sleep, clock=self.clock
        )

    def failpoint(self, name: str) -> None:
        """Crash tests: die here, at once and without cleanup, if FLUXHOOK_FAILPOINTS names this point."""
        if name in self.settings.failpoints:
            os.kill(os.getpid(), signal.SIGKILL)

    def kick(self) -> None:
        """Wake the in-process download loop: a job's files are due now (the store says so,
        so a kick lost to a crash is found by the next sweep all the same)."""
        self.downloads_due.set()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        store: Store | None = None,
        api: httpx.AsyncClient | None = None,
        cdn: httpx.AsyncClient | None = None,
        migrate: bool = True,
        **kwargs: Any,
    ) -> AsyncIterator[Runtime]:
        """Open whatever was not injected, and close exactly that on exit.

        Without `migrate`, the store's schema must already be current (`fluxhook migrate` is a deploy
        step): else Unavailable (503) naming that command; no migration is applied."""
        own_store = store is None
        if store is None:
            store = open_store(settings.db_to_open(), pool_size=settings.db_pool)
        if own_store:
            await store.open(migrate=migrate)
            if not migrate:
                try:
                    before, pending = await store.migrate(apply=False)
                except BaseException:
                    await store.close()
                    raise
                if pending:
                    await store.close()
                    raise Unavailable(schema_behind(settings.db_display, before, pending) + " before serving")
        timeout = httpx.Timeout(30.0, connect=10.0)
        own_api, own_cdn = api is None, cdn is None
        api = api or httpx.AsyncClient(timeout=timeout, trust_env=False, transport=_OnFirstRequest(trust_env=False))
        # Downloads connect to vetted IP addresses with the host name in SNI, one request per
        # connection (never reused under another host name), each holding a bounded read-ahead
        # (receiver/fetch/transport.py). A read may stall at most a quarter of the lease, so the
        # per-chunk renewal (every third of the lease) always comes before the lease lapses.
        cdn_timeout = httpx.Timeout(30.0, connect=10.0, read=min(30.0, settings.lease_seconds / 4))
        cdn = cdn or httpx.AsyncClient(
            timeout=cdn_timeout, trust_env=False, follow_redirects=False, transport=FetchTransport(),
        )
        try:
            rt = cls(settings=settings, store=store, api=api, cdn=cdn, **kwargs)
            try:
                if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("PROMETHEUS_MULTIPROCESS_DIR"):
                    # Workers sharing a metrics folder (metrics.multiprocess_dir): one that is missing or
                    # unwritable stops start-up here, not every callback later (metrics are made lazily).
                    _ = rt.prom
                yield rt
            finally:
                await rt.feed.close()
                await rt.relay.close()
        finally:
            if own_api:
                await api.aclose()
            if own_cdn:
                await cdn.aclose()
            if own_store:
                await store.close()

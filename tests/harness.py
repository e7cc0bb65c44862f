"""Receiver and simulator wired together in-process, with a manual clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.obs.logs import install_redaction
from receiver.store import Store
from receiver.store.sqlite import SQLiteStore
from receiver.web.app import create_app
from submitter.backoff import RetryPolicy
from submitter.client import Provider
from submitter.simulator import Faults, Simulator

MASTER = b"test-master-key-0123456789abcdef-0123456789"
SIM = "http://sim.test"
PUBLIC = "https://hooks.test"


class Clock:
    """A manual clock: tests move time, nothing sleeps."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings.from_env({})
    values: dict[str, Any] = {
        "public_url": PUBLIC,
        "db": str(tmp_path / "fluxhook.db"),
        "results": tmp_path / "results",
        "secret_key": MASTER,
        "providers": {n: Provider(p.dialect, SIM, "test-key") for n, p in base.providers.items()},
        "download_hosts": ("sim.test",),
        "download_allow_private": True,
        "download_allow_http": True,
        "poll_after": 60.0,
    }
    values.update(overrides)
    return base.with_overrides(**values)


async def loopback_resolver(host: str) -> list[str]:
    return ["127.0.0.1"]


@dataclass
class Harness:
    """Receiver and simulator wired together in-process; a manual clock drives the receiver."""

    settings: Settings
    rt: Runtime
    sim: Simulator
    app: Any
    clock: Clock
    client: httpx.AsyncClient  # talks to the receiver
    sleeps: list[float] = field(default_factory=list)

    async def settle(self) -> None:
        """Let the simulator send every callback it has due."""
        await self.sim.drain()


@contextlib.asynccontextmanager
async def harness(
    tmp_path: Path, *, faults: Faults | None = None, api_transport: httpx.AsyncBaseTransport | None = None,
    cdn_transport: httpx.AsyncBaseTransport | None = None, busy_timeout: float = 5.0, store: Store | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """With `store` given (opened, closed by the caller) the receiver runs on it; else on a fresh SQLite file."""
    settings = make_settings(tmp_path, **overrides)
    clock = Clock()
    own_store = store is None
    if store is None:
        store = SQLiteStore(settings.db, busy_timeout=busy_timeout)
        await store.open()
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    receiver_box: dict[str, Any] = {}

    class ToReceiver(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await httpx.ASGITransport(receiver_box["app"]).handle_async_request(request)

    sim_http = httpx.AsyncClient(transport=ToReceiver())
    sim = Simulator(http=sim_http, default_faults=faults or Faults(runtime=0.0), callback_retries=(), clock=clock)
    sim_transport = api_transport or httpx.ASGITransport(sim.app)
    api = httpx.AsyncClient(transport=sim_transport, base_url=SIM)
    cdn = httpx.AsyncClient(transport=cdn_transport or httpx.ASGITransport(sim.app))
    rt = Runtime(
        settings=settings, store=store, api=api, cdn=cdn, clock=clock, sleep=no_sleep,
        retry=RetryPolicy(attempts=4), resolver=loopback_resolver,
    )
    # What an entry point does (receiver/obs/logs.py configure_logging): this runtime's secrets leave every log line.
    install_redaction(rt.redactor)
    app = create_app(settings, runtime=rt, workers=False)
    receiver_box["app"] = app
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=PUBLIC)
    try:
        yield Harness(settings, rt, sim, app, clock, client, sleeps)
    finally:
        await sim.aclose()
        for c in (client, api, cdn, sim_http):
            await c.aclose()
        if own_store:
            await store.close()


def files_in(folder: Path) -> list[Path]:
    """Everything under `folder` (none if it was never created)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def provider_id(h: Harness, job_id: str) -> str:
    """The provider's task id of a submitted job."""
    job = await h.rt.store.get_job(job_id)
    assert job is not None and job.provider_job_id
    return job.provider_job_id

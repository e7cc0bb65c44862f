"""The Starlette application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.config.settings import Settings
from receiver.engine.relay import relay_loop
from receiver.engine.runtime import Runtime
from receiver.engine.sweep import download_loop, sweep_loop
from receiver.errors import ReceiverError
from receiver.obs.logs import settings_for_entry_point
from receiver.results.local import clean_partials
from receiver.store import StoreUnavailable
from receiver.web.api import api_routes
from receiver.web.api.ops import ops_routes
from receiver.web.callbacks import CallbackShortcut, error_response, health, hook
from receiver.web.routing import lazy
from receiver.web.streams import StreamLimits
from receiver.web.ui import ui_routes

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger("fluxhook")


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store unavailable: %s", exc)
    return JSONResponse({"error": "store unavailable, retry later"}, status_code=503, headers={"retry-after": "5"})


async def drain(rt: Runtime, tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Stop taking work, let in-flight downloads and sweeps finish for up to `grace`
    seconds, then cancel the rest; a cancelled job's lease is handed back at once."""
    rt.stopping.set()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    if pending:
        log.warning("shutdown: handing back %d unfinished background task(s)", len(pending))
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(settings: Settings, *, runtime: Runtime | None = None, workers: bool = True) -> Starlette:
    """Build the receiver.

    With `runtime` given (tests), the app uses it as is and starts no workers
    unless asked. Otherwise the lifespan opens one from `settings`, and with
    `workers` runs the sweep loop and the download workers in the background.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            rt = runtime
            if rt is None:
                # Only temp files older than any running download (another process's may be in progress).
                removed = (clean_partials(settings.results, older_than=settings.download_timeout + 60)
                           if settings.results_url is None and settings.results.exists() else 0)
                if removed:
                    log.info("removed %d partial downloads left by an earlier run", removed)
                rt = await stack.enter_async_context(Runtime.open(settings))
            app.state.runtime = rt
            tasks: list[asyncio.Task[None]] = []
            if workers:
                await rt.relay.register()  # owed every event from now on, before any request is served
                tasks.append(asyncio.create_task(sweep_loop(rt, settings.sweep_interval)))
                tasks.append(asyncio.create_task(download_loop(rt, settings.sweep_interval)))
                if rt.relay.sinks:
                    tasks.append(asyncio.create_task(relay_loop(rt.relay, settings.sweep_interval, feed=rt.feed,
                                                                stopping=rt.stopping, idle=rt.idle)))
            try:
                yield
            finally:
                await drain(rt, tasks, settings.drain_timeout)

    handlers = {ReceiverError: error_response, StoreUnavailable: _unavailable}
    app = Starlette(
        routes=[
            Route("/hooks/{provider}/{job_id}/{token}", hook, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/files/{job_id}/{n}", lazy("receiver.web.links:signed_file"), methods=["GET"]),
            Route("/v1/sweep", lazy("receiver.web.api.sweep:sweep"), methods=["POST"]),
            *api_routes(),
            *ops_routes(),
            *ui_routes(),
        ],
        exception_handlers=handlers,
        middleware=[Middleware(CallbackShortcut, handlers=handlers)],
        lifespan=lifespan,
    )
    # A trailing slash is a different (unknown) URL, not a redirect: providers do not follow them.
    app.router.redirect_slashes = False
    # Open event streams and long-polls, per key and in all (receiver/web/streams.py).
    app.state.streams = StreamLimits.from_settings(settings)
    if runtime is not None:
        app.state.runtime = runtime
    return app


def create_app_from_env() -> Starlette:
    """For `uvicorn --factory receiver.web.app:create_app_from_env`: an entry point, so it sets up
    logging (redaction, FLUXHOOK_LOG_FORMAT) as `fluxhook serve` does."""
    return create_app(settings_for_entry_point())

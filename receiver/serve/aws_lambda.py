"""AWS Lambda entry point: `receiver.serve.aws_lambda.handler`.

One function serves two kinds of event:

* HTTP (API Gateway HTTP API v2 or REST v1, a Lambda function URL): the receiver app through
  Mangum, exactly as `fluxhook serve` answers it;
* a scheduled EventBridge event (`"source": "aws.events"`, `"detail-type": "Scheduled Event"`): one
  sweep pass (submits, polls, downloads); the handler returns its report.

A warm Lambda instance keeps module state between invocations, so the settings, one event loop,
the Runtime (database pool, HTTP clients) and the app are built once, on the first invocation;
importing this module does nothing slow. Mangum's lifespan support would start and stop the app's
lifespan around every single event (a new database pool per request), so it is off here and the
Runtime is opened by this module and handed to `create_app(settings, runtime=rt, workers=False)`.

No background workers: a frozen instance must not hold work. The ledger is the work item; a
callback only records, and the scheduled sweep does whatever is left (downloads included).

GET /metrics is open unless FLUXHOOK_METRICS_TOKEN or FLUXHOOK_API_KEYS is set; the function cannot
see who may invoke it, so it only warns at start (the recipe in deploy/lambda sets the token).

Migrations are a deploy step (`fluxhook migrate`), never run here: with the schema behind, HTTP
events get 503 naming that command and a scheduled event fails with the same message. A failed
start is not kept: the next invocation tries again (after the migration, or once the database
answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

__all__ = ["handler", "is_scheduled", "reset"]

log = logging.getLogger("fluxhook.serverless")


def is_scheduled(event: Any) -> bool:
    """An EventBridge (CloudWatch Events) schedule's event, as opposed to an HTTP request."""
    return (isinstance(event, dict) and event.get("source") == "aws.events"
            and event.get("detail-type") == "Scheduled Event")


class _Instance:
    """What one warm Lambda instance keeps: its loop, Runtime and Mangum adapter."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.runtime: Any = None
        self.adapter: Any = None

    def run(self, coro: Any) -> Any:
        asyncio.set_event_loop(self.loop)  # Mangum runs the app on the thread's current loop
        return self.loop.run_until_complete(coro)

    def start(self) -> None:
        """Open the Runtime and build the app, unless already done; leaves nothing behind on failure."""
        if self.adapter is not None:
            return
        # Loaded by the first event, not by importing this module (see the docstring).
        from mangum import Mangum

        from receiver.engine.runtime import Runtime
        from receiver.obs.logs import settings_for_entry_point
        from receiver.web.app import create_app

        settings = settings_for_entry_point()
        if not (settings.metrics_protected or settings.metrics_public):
            # Who may invoke the function is AWS's to say (function URL, API Gateway), not ours to see.
            log.warning("GET /metrics is open to anyone who can invoke this function: set FLUXHOOK_METRICS_TOKEN "
                        "(deploy/lambda/template.yaml) or FLUXHOOK_API_KEYS; FLUXHOOK_METRICS_PUBLIC=1 if IAM or "
                        "API Gateway already keeps it private")

        async def open_runtime() -> Any:
            try:
                return await self.stack.enter_async_context(Runtime.open(settings, migrate=False))
            except BaseException:
                await self.stack.aclose()
                raise

        self.runtime = self.run(open_runtime())
        app = create_app(settings, runtime=self.runtime, workers=False)
        asyncio.set_event_loop(self.loop)
        self.adapter = Mangum(app, lifespan="off")

    def close(self) -> None:
        try:
            self.run(self.stack.aclose())
        finally:
            self.loop.close()
            asyncio.set_event_loop(None)


_instance: _Instance | None = None
_lock = threading.Lock()  # Lambda sends one event at a time per instance; local callers may not


def _unavailable(event: Any, context: Any, detail: str) -> dict[str, Any]:
    """A 503 in the shape the event's source expects (v1, v2 or function URL), via Mangum."""
    from mangum import Mangum
    from starlette.responses import JSONResponse

    response = JSONResponse({"error": detail}, status_code=503, headers={"retry-after": "5"})
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return Mangum(response, lifespan="off")(event, context)
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda handler: an HTTP event's response, or a scheduled event's sweep report."""
    global _instance
    # Imported here, not at the top: importing this module (Lambda's init) loads none of the app.
    from receiver.errors import ReceiverError
    from receiver.store import StoreUnavailable

    with _lock:
        if _instance is None:
            _instance = _Instance()
        instance = _instance
        try:
            instance.start()
        except (ReceiverError, StoreUnavailable) as exc:
            # Not kept: the next event tries again (after `fluxhook migrate`, or once the database answers).
            _instance = None
            instance.close()
            detail = exc.detail if isinstance(exc, ReceiverError) else "store unavailable, retry later"
            log.error("cannot start: %s", exc)
            if is_scheduled(event):
                raise
            return _unavailable(event, context, detail)
        except BaseException:
            _instance = None
            instance.close()
            raise
        if is_scheduled(event):
            from receiver.engine.sweep import sweep_once  # already loaded by the app: a name lookup

            report = instance.run(sweep_once(instance.runtime))
            log.info("scheduled sweep: %s", report.as_dict())
            return report.as_dict()
        asyncio.set_event_loop(instance.loop)
        return instance.adapter(event, context)


def reset() -> None:
    """Close the instance's Runtime and forget it (tests; a real instance simply ends)."""
    global _instance
    with _lock:
        instance, _instance = _instance, None
    if instance is not None:
        instance.close()

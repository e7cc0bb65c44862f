"""The simulator as one ASGI app: the BFL and Replicate parts over a shared state, the signed file
delivery, and a small control API (`/_sim/rules`, `/_sim/stats`)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from submitter.simulator.bfl import Bfl
from submitter.simulator.callbacks import Poster
from submitter.simulator.delivery import Delivery
from submitter.simulator.faults import Faults
from submitter.simulator.prediction import new_webhook_secret
from submitter.simulator.replicate import Replicate
from submitter.simulator.state import Job, SimState

__all__ = ["Simulator", "run_simulator"]


class Simulator:
    """The fake provider: `app` is the ASGI app; jobs, rules and stats live on the instance.

    `clock` decides what polls answer and when URLs expire; callbacks are sent
    after real sleeps of the job's `runtime` + `delay`.

    Replicate: `replicate_secret` (served by `GET /v1/webhooks/default/secret`)
    signs native predictions' webhooks, `proxy_secret` (served nowhere) those of
    predictions made through `/replicate/v1/...`; both are random `whsec_` keys
    unless given and may be reassigned (rotation). Output URLs live
    `replicate_url_lifetime` seconds; outputs are removed (`data_removed`)
    `replicate_data_lifetime` seconds after completion.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient | None = None,
        url_lifetime: float = 600.0,
        callback_retries: tuple[float, ...] = (1.0, 5.0, 30.0),
        default_faults: Faults = Faults(),
        clock: Callable[[], float] = time.time,
        replicate_secret: str | None = None,
        proxy_secret: str | None = None,
        replicate_url_lifetime: float = 3600.0,
        replicate_data_lifetime: float = 3600.0,
    ) -> None:
        #: Settings, rules, jobs and counters; its public attributes may be reassigned (see the properties).
        self.state = SimState(
            clock=clock,
            url_lifetime=url_lifetime,
            callback_retries=tuple(callback_retries),
            default_faults=default_faults,
            replicate_secret=replicate_secret or new_webhook_secret(),
            proxy_secret=proxy_secret or new_webhook_secret(),
            replicate_url_lifetime=replicate_url_lifetime,
            replicate_data_lifetime=replicate_data_lifetime,
        )
        self._poster = Poster(self.state, http)
        delivery = Delivery(self.state)
        self.app = Starlette(
            routes=[
                *Replicate(self.state, delivery, self._poster).routes(),
                *Bfl(self.state, delivery, self._poster).routes(),
                Route("/delivery/{task_id}/{filename}", delivery.serve, methods=["GET"]),
                Route("/_sim/rules", self._add_rule_http, methods=["POST"]),
                Route("/_sim/stats", self._stats_http, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # -- settings (kept on the shared state, so every part sees a change at once) ---------

    @property
    def clock(self) -> Callable[[], float]:
        return self.state.clock

    @property
    def url_lifetime(self) -> float:
        return self.state.url_lifetime

    @url_lifetime.setter
    def url_lifetime(self, seconds: float) -> None:
        self.state.url_lifetime = seconds

    @property
    def callback_retries(self) -> tuple[float, ...]:
        return self.state.callback_retries

    @property
    def replicate_secret(self) -> str:
        return self.state.replicate_secret

    @replicate_secret.setter
    def replicate_secret(self, secret: str) -> None:
        self.state.replicate_secret = secret

    @property
    def proxy_secret(self) -> str:
        return self.state.proxy_secret

    @proxy_secret.setter
    def proxy_secret(self, secret: str) -> None:
        self.state.proxy_secret = secret

    @property
    def replicate_url_lifetime(self) -> float:
        return self.state.replicate_url_lifetime

    @replicate_url_lifetime.setter
    def replicate_url_lifetime(self, seconds: float) -> None:
        self.state.replicate_url_lifetime = seconds

    @property
    def replicate_data_lifetime(self) -> float:
        return self.state.replicate_data_lifetime

    # -- configuration and inspection ---------------------------------------------

    def add_rule(self, prompt_contains: str, faults: Faults) -> None:
        """Give jobs whose prompt contains `prompt_contains` these faults (first match wins)."""
        self.state.add_rule(prompt_contains, faults)

    def job(self, task_id: str) -> Job | None:
        """The simulator's record of a task or prediction (its accept time, `done_at`, counters)."""
        return self.state.job(task_id)

    def stats(self) -> dict[str, Any]:
        """Per-task counters and totals. A task's `submits` includes the rejected
        attempts with the same prompt that preceded it."""
        return self.state.stats()

    async def drain(self) -> None:
        """Wait until every callback and other background work has finished."""
        await self.state.drain()

    async def aclose(self) -> None:
        """Cancel background work and close the HTTP client if this simulator made it."""
        await self.state.cancel_background()
        await self._poster.aclose()

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()

    # -- HTTP control API ------------------------------------------------------------

    async def _add_rule_http(self, request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            prompt_contains = data.pop("prompt_contains")
            if not isinstance(prompt_contains, str):
                raise TypeError("prompt_contains must be a string")
            faults = Faults.from_json(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return JSONResponse({"detail": f"invalid rule: {exc}"}, 422)
        return JSONResponse({"ok": True, "rules": self.state.add_rule(prompt_contains, faults)})

    async def _stats_http(self, request: Request) -> Response:
        return JSONResponse(self.stats())


def run_simulator(host: str = "127.0.0.1", port: int = 8900, **kwargs: Any) -> None:
    """Serve a :class:`Simulator` (built with `kwargs`) with uvicorn until interrupted."""
    import uvicorn  # deferred: only `fluxhook simulate` serves, and uvicorn is heavy to import

    uvicorn.run(Simulator(**kwargs).app, host=host, port=port, log_level="warning")

"""Replicate's predictions API for the simulator, native and as the DeerAPI/CometAPI proxies serve it.

Routes (all need `Authorization: Bearer <anything>`; proxies use the same paths under `/replicate`):

    POST /v1/models/{owner}/{name}/predictions  -> 201, a "starting" prediction
    GET  /v1/predictions/{id}                   -> the current snapshot (counted as a poll)
    POST /v1/predictions/{id}/cancel            -> cancels unless terminal, returns the snapshot
    GET  /v1/webhooks/default/secret            -> {"key": Simulator.replicate_secret} (native only)

Phases: :class:`submitter.simulator.prediction.Prediction`. Polls read the phase from the simulator's clock.
Webhooks (Standard Webhooks v1) are sent in real time, each carrying the
snapshot of the phase it announces: `start` at once, `logs` at r/3, `output` at
2r/3 (list outputs only), `completed` at r + delay; only `completed` is retried,
keeping its `webhook-id`. A cancel wakes the sender, which then sends `completed`.
Predictions from the proxy paths are found only there, and their webhooks are
signed with `Simulator.proxy_secret`, which no endpoint reveals.
"""


from __future__ import annotations

import asyncio
import json
import logging
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from submitter.signing import sign_standard
from submitter.simulator.callbacks import Poster
from submitter.simulator.delivery import Delivery
from submitter.simulator.prediction import (
    DEFAULT_EVENTS,
    ERROR_OF_OUTCOME,
    OUTPUT,
    PROCESSING,
    STARTING,
    TERMINAL,
    Prediction,
    canceled_within,
    invalid,
    iso,
    logs,
    new_message_id,
    random_id,
    wrong_secret,
)
from submitter.simulator.state import SimState

__all__ = ["Replicate"]

log = logging.getLogger(__name__)

API = "https://api.replicate.com/v1"


def _error(status: int, title: str, detail: str, **extra: Any) -> Response:
    headers = {"Retry-After": "0"} if status == 429 else None
    return JSONResponse({"title": title, "detail": detail, "status": status, **extra}, status, headers=headers)


class Replicate:
    """The Replicate half of a :class:`Simulator`: routes, snapshots and webhooks."""

    def __init__(self, state: SimState, delivery: Delivery, poster: Poster) -> None:
        self.state = state
        self.delivery = delivery
        self.poster = poster

    def routes(self) -> list[Route]:
        routes = [Route("/v1/webhooks/default/secret", self._secret, methods=["GET"])]
        for prefix, proxy in (("", False), ("/replicate", True)):
            routes += [
                Route(
                    f"{prefix}/v1/models/{{owner}}/{{name}}/predictions",
                    partial(self._create, proxy=proxy),
                    methods=["POST"],
                ),
                Route(f"{prefix}/v1/predictions/{{prediction_id}}", partial(self._get, proxy=proxy), methods=["GET"]),
                Route(
                    f"{prefix}/v1/predictions/{{prediction_id}}/cancel",
                    partial(self._cancel, proxy=proxy),
                    methods=["POST"],
                ),
            ]
        return routes

    # -- HTTP API ---------------------------------------------------------------------

    @staticmethod
    def _auth_error(request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "Unauthenticated", "Unauthenticated")
        return None

    def _find(self, request: Request, proxy: bool) -> Prediction | Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        prediction = self.state.job(request.path_params["prediction_id"])
        if not isinstance(prediction, Prediction) or prediction.proxy != proxy:
            return _error(404, "Not found", "Not found.")
        return prediction

    async def _create(self, request: Request, *, proxy: bool) -> Response:
        sim = self.state
        sim.count("submit_requests")
        if (denied := self._auth_error(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if (problem := invalid(body)) is not None:
            return _error(422, "Input validation failed", problem, invalid_fields=[{"description": problem}])
        prompt = body["input"].get("prompt")
        prompt = prompt if isinstance(prompt, str) else ""
        faults = sim.screen(prompt)
        if isinstance(faults, int):
            if faults == 429:
                return _error(429, "Request was throttled.", "Request was throttled. Expected available in 1 second.")
            return _error(faults, "Simulated error", "simulated")
        events = body.get("webhook_events_filter")
        prediction = Prediction(
            id=random_id(),
            model=f"{request.path_params['owner']}/{request.path_params['name']}",
            prompt=prompt,
            faults=faults,
            base_url=str(request.base_url).rstrip("/"),
            accepted_at=sim.clock(),
            webhook_url=body.get("webhook") or None,
            webhook_secret=None,
            submits=sim.submits_for(prompt),
            input=body["input"],
            proxy=proxy,
            events=DEFAULT_EVENTS if events is None else tuple(dict.fromkeys(events)),
            data_lifetime=sim.replicate_data_lifetime,
            stream_id=random_id(),
        )
        sim.add(prediction)
        if prediction.webhook_url and not faults.drop:
            sim.spawn(self._send_webhooks(prediction))
        return JSONResponse(self.snapshot(prediction, STARTING), 201)

    async def _get(self, request: Request, *, proxy: bool) -> Response:
        found = self._find(request, proxy)
        if isinstance(found, Response):
            return found
        self.state.count("polls")
        found.polls += 1
        return JSONResponse(self.snapshot(found, found.phase_at(self.state.clock())))

    async def _cancel(self, request: Request, *, proxy: bool) -> Response:
        found = self._find(request, proxy)
        if isinstance(found, Response):
            return found
        self.state.count("cancels")
        found.cancels += 1
        now = self.state.clock()
        if found.phase_at(now) != TERMINAL:
            found.canceled_at = now
            found.woken.set()
        return JSONResponse(self.snapshot(found, found.phase_at(now)))

    async def _secret(self, request: Request) -> Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        return JSONResponse({"key": self.state.replicate_secret})

    # -- snapshots ---------------------------------------------------------------------

    def snapshot(self, p: Prediction, phase: int) -> dict[str, Any]:
        """The prediction object as it looks in `phase` (the body of GETs and webhooks)."""
        now = self.state.clock()
        status, reached = p.status(phase), p.reached(phase)
        removed = phase == TERMINAL and p.removed(now)
        started_at = p.accepted_at + p.faults.runtime / 3 if reached >= PROCESSING else None
        output: str | list[str] | None = None
        if not removed and (status == "succeeded" or (phase == OUTPUT and p.is_list)):
            count = p.faults.outputs if status == "succeeded" else max(1, p.faults.outputs // 2)
            expires_at = self.delivery.expiry(p, self.state.replicate_url_lifetime)
            urls = [self.delivery.url(p, p.filename(i), expires_at) for i in range(count)]
            output = urls if p.is_list else urls[0]
        metrics: dict[str, Any] = {}
        if phase == TERMINAL and started_at is not None:
            metrics = {"predict_time": p.completed_at - started_at, "total_time": p.completed_at - p.accepted_at}
            if status == "succeeded":
                metrics["image_count"] = p.faults.outputs
        body = {
            "id": p.id,
            "model": p.model,
            "version": "hidden",
            "input": p.input,
            "logs": logs(p, reached, status),
            "output": output,
            "data_removed": removed,
            "error": ERROR_OF_OUTCOME.get(p.faults.outcome) if status == "failed" else None,
            "status": status,
            "created_at": iso(p.accepted_at),
            "started_at": iso(started_at),
            "completed_at": iso(p.completed_at) if phase == TERMINAL else None,
            "urls": {
                "get": f"{API}/predictions/{p.id}",
                "cancel": f"{API}/predictions/{p.id}/cancel",
                "stream": f"https://stream.replicate.com/v1/files/{p.stream_id}",
                "web": f"https://replicate.com/p/{p.id}",
            },
            "metrics": metrics,
            "source": "api",
        }
        if p.webhook_url:
            body |= {"webhook": p.webhook_url, "webhook_events_filter": list(p.events)}
        return body

    # -- webhooks ----------------------------------------------------------------------

    async def _send_webhooks(self, p: Prediction) -> None:
        try:
            faults, runtime = p.faults, p.faults.runtime
            held: list[tuple[str, bytes]] = []  # intermediate events kept back under `reorder`

            async def intermediate(event: str, phase: int) -> None:
                if event in p.events:
                    raw = self._raw(p, phase)
                    if faults.reorder:
                        held.append((event, raw))
                    else:
                        await self._deliver(p, event, raw, new_message_id(), retry=False)

            await intermediate("start", STARTING)
            steps = [] if faults.outcome == "aborted" else [(runtime / 3, "logs", PROCESSING)]
            if p.is_list and steps:
                steps.append((runtime / 3, "output", OUTPUT))
            for pause, event, phase in steps:
                if await canceled_within(p, pause):
                    break
                await intermediate(event, phase)
            else:
                await canceled_within(p, runtime - sum(pause for pause, _, _ in steps))
            await asyncio.sleep(faults.delay)
            # With `completed` requested, its body carries the final output; else an `output` event does.
            final_output = "output" in p.events and "completed" not in p.events and p.terminal_status == "succeeded"
            completed = "completed" in p.events and not faults.drop_completed
            if final_output or completed:  # built only when sent: it may hand out the `expired_url` URLs
                raw = self._raw(p, TERMINAL)
                if final_output:
                    await self._deliver(p, "output", raw, new_message_id(), retry=False)
                else:
                    message_id = new_message_id()  # the same for every duplicate and retry
                    await asyncio.gather(
                        *(self._deliver(p, "completed", raw, message_id, retry=True) for _ in range(faults.duplicate))
                    )
            if faults.reorder:
                if not held:  # nothing was held back: send a stale snapshot anyway
                    event, phase = ("start", STARTING) if faults.outcome == "aborted" else ("logs", PROCESSING)
                    held.append((event, self._raw(p, phase)))
                for event, stale in held:
                    await self._deliver(p, event, stale, new_message_id(), retry=False)
        except Exception:  # a background task must never die noisily
            log.exception("simulator: webhooks for prediction %s failed", p.id)

    def _raw(self, p: Prediction, phase: int) -> bytes:
        return json.dumps(self.snapshot(p, phase)).encode()

    async def _deliver(self, p: Prediction, event: str, raw: bytes, message_id: str, *, retry: bool) -> None:
        """POST one webhook; only with `retry` again on failure, per `callback_retries`."""
        for pause in (*self.state.callback_retries, None) if retry else (None,):
            p.events_sent[event] += 1
            if await self.poster.post(p, raw, self._headers(p, message_id, raw)):
                return
            if pause is not None:
                await asyncio.sleep(pause)
        if retry:
            self.state.count("callbacks_failed")

    def _headers(self, p: Prediction, message_id: str, raw: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if p.faults.signature == "none":  # like a proxy forwarding the body alone
            return headers
        secret = self.state.proxy_secret if p.proxy else self.state.replicate_secret
        if p.faults.bad_signature:
            secret = wrong_secret(secret)
        timestamp = int(self.state.clock())  # fresh on every attempt, as Standard Webhooks says
        return headers | {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(secret, message_id, timestamp, raw),
        }



"""Replicate's predictions API for the simulator, native and as the DeerAPI/CometAPI proxies serve it.

Routes (all need `Authorization: Bearer <anything>`; proxies use the same paths under `/replicate`):

    POST /v1/models/{owner}/{name}/predictions  -> 201, a "starting" prediction
    GET  /v1/predictions/{id}                   -> the current snapshot (counted as a poll)
    POST /v1/predictions/{id}/cancel            -> cancels unless terminal, returns the snapshot
    GET  /v1/webhooks/default/secret            -> {"key": Simulator.replicate_secret} (native only)

A prediction with runtime r is `starting` until r/3, `processing` until r (logs
grow; from 2r/3 a list output is partially there), then terminal: `succeeded`,
or as its `outcome` fault says. Polls read the phase from the simulator's clock.
Webhooks (Standard Webhooks v1) are sent in real time, each carrying the
snapshot of the phase it announces: `start` at once, `logs` at r/3, `output` at
2r/3 (list outputs only), `completed` at r + delay; only `completed` is retried,
keeping its `webhook-id`. A cancel wakes the sender, which then sends `completed`.
Predictions from the proxy paths are found only there, and their webhooks are
signed with `Simulator.proxy_secret`, which no endpoint reveals.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from submitter.signing import sign_standard
from submitter.simulator import _Job

if TYPE_CHECKING:
    from submitter.simulator import Simulator

__all__ = ["DEFAULT_EVENTS", "EVENTS", "TERMINAL_STATUSES", "Replicate", "new_webhook_secret"]

log = logging.getLogger(__name__)

API = "https://api.replicate.com/v1"
EVENTS = ("start", "output", "logs", "completed")
#: Without `webhook_events_filter`: "new outputs or the prediction has finished" (Replicate's docs).
DEFAULT_EVENTS = ("output", "completed")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
STATUS_OF_OUTCOME = {
    "ready": "succeeded",
    "error": "failed",
    "request_moderated": "failed",
    "content_moderated": "failed",
    "canceled": "canceled",
    "aborted": "aborted",
}
ERROR_OF_OUTCOME = {
    "error": "simulated failure",
    "request_moderated": "NSFW content detected in the prompt. Try a different prompt.",
    "content_moderated": "NSFW content detected. Try running it again, or try a different prompt.",
}
# Phases of a prediction, in order.
STARTING, PROCESSING, OUTPUT, TERMINAL = range(4)


def new_webhook_secret() -> str:
    """A fresh signing secret shaped like Replicate's: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _random_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def _message_id() -> str:
    return "msg_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


def _wrong_secret(secret: str) -> str:
    return "whsec_" + base64.b64encode(hashlib.sha256(b"wrong" + secret.encode()).digest()).decode()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _error(status: int, title: str, detail: str, **extra: Any) -> Response:
    headers = {"Retry-After": "0"} if status == 429 else None
    return JSONResponse({"title": title, "detail": detail, "status": status, **extra}, status, headers=headers)


@dataclass
class _Prediction(_Job):
    input: dict[str, Any] = field(default_factory=dict)
    proxy: bool = False
    events: tuple[str, ...] = DEFAULT_EVENTS
    data_lifetime: float = 3600.0
    stream_id: str = ""
    canceled_at: float | None = None
    cancels: int = 0
    events_sent: Counter[str] = field(default_factory=Counter)
    woken: asyncio.Event = field(default_factory=asyncio.Event)  # set by a cancel

    @property
    def is_list(self) -> bool:
        return self.faults.outputs > 1 or self.faults.output_list

    def running_phase(self, t: float) -> int:
        """The phase at sim time `t`, ignoring cancels and the end."""
        if self.faults.outcome == "aborted":
            return STARTING
        elapsed, runtime = t - self.accepted_at, self.faults.runtime
        return OUTPUT if elapsed >= runtime * 2 / 3 else PROCESSING if elapsed >= runtime / 3 else STARTING

    def phase_at(self, now: float) -> int:
        return TERMINAL if self.canceled_at is not None or now >= self.done_at else self.running_phase(now)

    @property
    def terminal_status(self) -> str:
        return "canceled" if self.canceled_at is not None else STATUS_OF_OUTCOME[self.faults.outcome]

    @property
    def completed_at(self) -> float:
        return self.canceled_at if self.canceled_at is not None else self.done_at

    def reached(self, phase: int) -> int:
        """The last running phase whose logs and output a snapshot of `phase` shows."""
        if phase != TERMINAL:
            return phase
        if self.canceled_at is not None:
            return self.running_phase(self.canceled_at)
        return STARTING if self.faults.outcome == "aborted" else OUTPUT

    def status(self, phase: int) -> str:
        return self.terminal_status if phase == TERMINAL else "starting" if phase == STARTING else "processing"

    def removed(self, now: float) -> bool:
        return self.phase_at(now) == TERMINAL and now >= self.completed_at + self.data_lifetime

    def filename(self, index: int) -> str:
        return f"out-{index}.{self.faults.image_format}"

    def files(self, now: float) -> dict[str, str]:
        if self.removed(now):
            return {}
        return {self.filename(i): f"{self.id}/out-{i}" for i in range(self.faults.outputs)}

    def stats(self, now: float) -> dict[str, Any]:
        return super().stats(now) | {
            "kind": "replicate",
            "status": self.status(self.phase_at(now)),
            "events_sent": {event: self.events_sent[event] for event in EVENTS},
            "cancels": self.cancels,
        }


class Replicate:
    """The Replicate half of a :class:`Simulator`: routes, snapshots and webhooks."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

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

    def _find(self, request: Request, proxy: bool) -> _Prediction | Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        prediction = self.sim._jobs.get(request.path_params["prediction_id"])
        if not isinstance(prediction, _Prediction) or prediction.proxy != proxy:
            return _error(404, "Not found", "Not found.")
        return prediction

    async def _create(self, request: Request, *, proxy: bool) -> Response:
        sim = self.sim
        sim._totals["submit_requests"] += 1
        if (denied := self._auth_error(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if (problem := _invalid(body)) is not None:
            return _error(422, "Input validation failed", problem, invalid_fields=[{"description": problem}])
        prompt = body["input"].get("prompt")
        prompt = prompt if isinstance(prompt, str) else ""
        faults = sim._screen(prompt)
        if isinstance(faults, int):
            if faults == 429:
                return _error(429, "Request was throttled.", "Request was throttled. Expected available in 1 second.")
            return _error(faults, "Simulated error", "simulated")
        events = body.get("webhook_events_filter")
        prediction = _Prediction(
            id=_random_id(),
            model=f"{request.path_params['owner']}/{request.path_params['name']}",
            prompt=prompt,
            faults=faults,
            base_url=str(request.base_url).rstrip("/"),
            accepted_at=sim.clock(),
            webhook_url=body.get("webhook") or None,
            webhook_secret=None,
            submits=1 + sim._rejected_by_prompt.pop(prompt, 0),
            input=body["input"],
            proxy=proxy,
            events=DEFAULT_EVENTS if events is None else tuple(dict.fromkeys(events)),
            data_lifetime=sim.replicate_data_lifetime,
            stream_id=_random_id(),
        )
        sim._jobs[prediction.id] = prediction
        if prediction.webhook_url and not faults.drop:
            sim._spawn(self._send_webhooks(prediction))
        return JSONResponse(self.snapshot(prediction, STARTING), 201)

    async def _get(self, request: Request, *, proxy: bool) -> Response:
        found = self._find(request, proxy)
        if isinstance(found, Response):
            return found
        self.sim._totals["polls"] += 1
        found.polls += 1
        return JSONResponse(self.snapshot(found, found.phase_at(self.sim.clock())))

    async def _cancel(self, request: Request, *, proxy: bool) -> Response:
        found = self._find(request, proxy)
        if isinstance(found, Response):
            return found
        self.sim._totals["cancels"] += 1
        found.cancels += 1
        now = self.sim.clock()
        if found.phase_at(now) != TERMINAL:
            found.canceled_at = now
            found.woken.set()
        return JSONResponse(self.snapshot(found, found.phase_at(now)))

    async def _secret(self, request: Request) -> Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        return JSONResponse({"key": self.sim.replicate_secret})

    # -- snapshots ---------------------------------------------------------------------

    def snapshot(self, p: _Prediction, phase: int) -> dict[str, Any]:
        """The prediction object as it looks in `phase` (the body of GETs and webhooks)."""
        now = self.sim.clock()
        status, reached = p.status(phase), p.reached(phase)
        removed = phase == TERMINAL and p.removed(now)
        started_at = p.accepted_at + p.faults.runtime / 3 if reached >= PROCESSING else None
        output: str | list[str] | None = None
        if not removed and (status == "succeeded" or (phase == OUTPUT and p.is_list)):
            count = p.faults.outputs if status == "succeeded" else max(1, p.faults.outputs // 2)
            expires_at = self.sim._url_expiry(p, self.sim.replicate_url_lifetime)
            urls = [self.sim._delivery_url(p, p.filename(i), expires_at) for i in range(count)]
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
            "logs": _logs(p, reached, status),
            "output": output,
            "data_removed": removed,
            "error": ERROR_OF_OUTCOME.get(p.faults.outcome) if status == "failed" else None,
            "status": status,
            "created_at": _iso(p.accepted_at),
            "started_at": _iso(started_at),
            "completed_at": _iso(p.completed_at) if phase == TERMINAL else None,
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

    async def _send_webhooks(self, p: _Prediction) -> None:
        try:
            faults, runtime = p.faults, p.faults.runtime
            held: list[tuple[str, bytes]] = []  # intermediate events kept back under `reorder`

            async def intermediate(event: str, phase: int) -> None:
                if event in p.events:
                    raw = self._raw(p, phase)
                    if faults.reorder:
                        held.append((event, raw))
                    else:
                        await self._deliver(p, event, raw, _message_id(), retry=False)

            await intermediate("start", STARTING)
            steps = [] if faults.outcome == "aborted" else [(runtime / 3, "logs", PROCESSING)]
            if p.is_list and steps:
                steps.append((runtime / 3, "output", OUTPUT))
            for pause, event, phase in steps:
                if await _canceled_within(p, pause):
                    break
                await intermediate(event, phase)
            else:
                await _canceled_within(p, runtime - sum(pause for pause, _, _ in steps))
            await asyncio.sleep(faults.delay)
            # With `completed` requested, its body carries the final output; else an `output` event does.
            final_output = "output" in p.events and "completed" not in p.events and p.terminal_status == "succeeded"
            completed = "completed" in p.events and not faults.drop_completed
            if final_output or completed:  # built only when sent: it may hand out the `expired_url` URLs
                raw = self._raw(p, TERMINAL)
                if final_output:
                    await self._deliver(p, "output", raw, _message_id(), retry=False)
                else:
                    message_id = _message_id()  # the same for every duplicate and retry
                    await asyncio.gather(
                        *(self._deliver(p, "completed", raw, message_id, retry=True) for _ in range(faults.duplicate))
                    )
            if faults.reorder:
                if not held:  # nothing was held back: send a stale snapshot anyway
                    event, phase = ("start", STARTING) if faults.outcome == "aborted" else ("logs", PROCESSING)
                    held.append((event, self._raw(p, phase)))
                for event, stale in held:
                    await self._deliver(p, event, stale, _message_id(), retry=False)
        except Exception:  # a background task must never die noisily
            log.exception("simulator: webhooks for prediction %s failed", p.id)

    def _raw(self, p: _Prediction, phase: int) -> bytes:
        return json.dumps(self.snapshot(p, phase)).encode()

    async def _deliver(self, p: _Prediction, event: str, raw: bytes, message_id: str, *, retry: bool) -> None:
        """POST one webhook; only with `retry` again on failure, per `callback_retries`."""
        for pause in (*self.sim.callback_retries, None) if retry else (None,):
            p.events_sent[event] += 1
            if await self.sim._post(p, raw, self._headers(p, message_id, raw)):
                return
            if pause is not None:
                await asyncio.sleep(pause)
        if retry:
            self.sim._totals["callbacks_failed"] += 1

    def _headers(self, p: _Prediction, message_id: str, raw: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if p.faults.signature == "none":  # like a proxy forwarding the body alone
            return headers
        secret = self.sim.proxy_secret if p.proxy else self.sim.replicate_secret
        if p.faults.bad_signature:
            secret = _wrong_secret(secret)
        timestamp = int(self.sim.clock())  # fresh on every attempt, as Standard Webhooks says
        return headers | {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(secret, message_id, timestamp, raw),
        }


async def _canceled_within(p: _Prediction, seconds: float) -> bool:
    """Sleep up to `seconds`, waking early on a cancel; True if the prediction was canceled."""
    if seconds > 0 and not p.woken.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.woken.wait(), seconds)
    return p.woken.is_set()


def _invalid(body: Any) -> str | None:
    """Why a create body is refused, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        return "input: Invalid type. Expected: object"
    if not isinstance(body.get("webhook"), (str, type(None))):
        return "webhook: Invalid type. Expected: string"
    events = body.get("webhook_events_filter")
    if events is not None and not (isinstance(events, list) and all(e in EVENTS for e in events)):
        return f"webhook_events_filter: must be a list drawn from {list(EVENTS)}"
    return None


def _logs(p: _Prediction, reached: int, status: str) -> str:
    if reached < PROCESSING:
        return ""
    seed = p.input.get("seed")
    lines = [f"Using seed: {seed if isinstance(seed, int) else 42}"]
    if reached >= OUTPUT:
        lines += ["step 1/4", "step 2/4"]
    if status == "succeeded":
        lines += ["step 3/4", "step 4/4", f"Generated {p.faults.outputs} image(s) in {p.faults.runtime:.2f}s"]
    elif status == "failed":
        lines.append(f"Error: {ERROR_OF_OUTCOME.get(p.faults.outcome)}")
    return "".join(line + "\n" for line in lines)

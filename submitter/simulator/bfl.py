"""BFL's native API (`/v1/...`, `x-key`) and the DeerAPI/CometAPI proxy shape (`/flux/v1/...`, Bearer)
for the simulator: submit, poll, and BFL-style webhook callbacks."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from functools import partial
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from submitter.signing import sign_bfl
from submitter.simulator.callbacks import Poster
from submitter.simulator.delivery import Delivery
from submitter.simulator.faults import OUTCOMES
from submitter.simulator.state import Job, SimState

__all__ = ["UPSTREAM_POLLING_URL", "Bfl"]

log = logging.getLogger(__name__)

#: What the proxies echo as `polling_url`: upstream BFL, unusable with a proxy key.
UPSTREAM_POLLING_URL = "https://api.eu2.bfl.ai/v1/get_result?id={id}"


def _body(job: Job, status: str, **extra: Any) -> dict[str, Any]:
    body = {"id": job.id, "status": status, "result": None, "progress": None, "details": None, "preview": None}
    return body | extra


class Bfl:
    """The BFL half of a simulator: routes, task snapshots and callbacks."""

    def __init__(self, state: SimState, delivery: Delivery, poster: Poster) -> None:
        self.state = state
        self.delivery = delivery
        self.poster = poster

    def routes(self) -> list[Route]:
        return [
            Route("/v1/get_result", partial(self._get_result, proxy=False), methods=["GET"]),
            Route("/v1/{model}", partial(self._submit, proxy=False), methods=["POST"]),
            Route("/flux/v1/get_result", partial(self._get_result, proxy=True), methods=["GET"]),
            Route("/flux/v1/{model}", partial(self._submit, proxy=True), methods=["POST"]),
        ]

    # -- submit and poll -------------------------------------------------------------

    @staticmethod
    def _auth_error(request: Request, proxy: bool) -> Response | None:
        if proxy:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                return JSONResponse({"error": {"message": "invalid or missing API key", "type": "auth"}}, 401)
        elif not request.headers.get("x-key", "").strip():
            return JSONResponse({"detail": "Not authenticated"}, 401)
        return None

    async def _submit(self, request: Request, *, proxy: bool) -> Response:
        self.state.count("submit_requests")
        if (denied := self._auth_error(request, proxy)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(name), (str, type(None))) for name in ("prompt", "webhook_url", "webhook_secret")
        ):
            invalid = {"loc": ["body"], "msg": "expected a JSON object with string fields", "type": "value_error"}
            return JSONResponse({"detail": [invalid]}, 422)
        prompt: str = body.get("prompt") or ""
        webhook_url: str | None = body.get("webhook_url")
        faults = self.state.screen(prompt)
        if isinstance(faults, int):
            headers = {"Retry-After": "0"} if faults == 429 else None
            return JSONResponse({"detail": "simulated"}, faults, headers=headers)
        job = Job(
            id=str(uuid.uuid4()),
            model=request.path_params["model"],
            prompt=prompt,
            faults=faults,
            base_url=str(request.base_url).rstrip("/"),
            accepted_at=self.state.clock(),
            webhook_url=webhook_url or None,
            webhook_secret=body.get("webhook_secret") or None,
            submits=self.state.submits_for(prompt),
        )
        self.state.add(job)
        if job.webhook_url and not job.faults.drop:
            self.state.spawn(self._send_callbacks(job))
        if job.faults.webhook_shape:
            return JSONResponse({"id": job.id, "status": "Pending", "webhook_url": webhook_url})
        if proxy:
            polling_url = UPSTREAM_POLLING_URL.format(id=job.id)
            return JSONResponse(
                {"id": job.id, "polling_url": polling_url, "cost": None, "input_mp": None, "output_mp": None}
            )
        polling_url = f"{job.base_url}/v1/get_result?id={quote(job.id)}"
        return JSONResponse({"id": job.id, "polling_url": polling_url, "cost": 1.0, "input_mp": 0.0, "output_mp": 1.0})

    async def _get_result(self, request: Request, *, proxy: bool) -> Response:
        if (denied := self._auth_error(request, proxy)) is not None:
            return denied
        self.state.count("polls")
        task_id = request.query_params.get("id", "")
        job = self.state.job(task_id)
        if job is None:
            return JSONResponse({"id": task_id, "status": "Task not found"})
        job.polls += 1
        now = self.state.clock()
        if now < job.done_at:
            progress = int(100 * (now - job.accepted_at) / job.faults.runtime) if job.faults.runtime else 0
            return JSONResponse(_body(job, "Pending", progress=max(0, min(99, progress))))
        return JSONResponse(self._terminal_body(job))

    def _terminal_body(self, job: Job) -> dict[str, Any]:
        status = OUTCOMES[job.faults.outcome]
        if status == "Error":
            return _body(job, status, details={"error": "simulated failure"})
        if status != "Ready":
            return _body(job, status, details={"Moderation Reasons": ["Simulated"]})
        filename = f"sample.{job.faults.image_format}"
        result = {
            "sample": self.delivery.url(job, filename, self.delivery.expiry(job, self.state.url_lifetime)),
            "seed": 42,
            "prompt": job.prompt,
            "start_time": job.accepted_at,
            "end_time": job.done_at,
            "duration": job.faults.runtime,
        }
        return _body(job, status, result=result)

    # -- callbacks -------------------------------------------------------------------

    async def _send_callbacks(self, job: Job) -> None:
        try:
            faults = job.faults
            if faults.progress:
                await asyncio.sleep(faults.runtime / 2)
                await self._post(job, {"task_id": job.id, "status": "processing", "progress": 50})
            await asyncio.sleep((faults.runtime / 2 if faults.progress else faults.runtime) + faults.delay)
            body = json.dumps(self._terminal_body(job)).encode()
            await asyncio.gather(*(self._post_with_retries(job, body) for _ in range(faults.duplicate)))
            if faults.reorder:
                await self._post(job, {"task_id": job.id, "status": "Pending", "progress": 10})
        except Exception:  # a background task must never die noisily
            log.exception("simulator: callbacks for task %s failed", job.id)

    async def _post_with_retries(self, job: Job, body: bytes) -> None:
        for pause in (*self.state.callback_retries, None):
            if await self._post(job, body):
                return
            if pause is not None:
                await asyncio.sleep(pause)
        self.state.count("callbacks_failed")

    async def _post(self, job: Job, body: bytes | dict[str, Any]) -> bool:
        """POST one BFL-style callback, signed as the job's faults say."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if job.webhook_secret:
            secret = "wrong-" + job.webhook_secret if job.faults.bad_signature else job.webhook_secret
            if job.faults.signature == "hmac":
                headers["x-bfl-signature"] = sign_bfl(secret, raw)
            elif job.faults.signature == "echo":
                headers["x-webhook-secret"] = secret
        return await self.poster.post(job, raw, headers)

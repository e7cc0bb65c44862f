"""A fake FLUX provider for tests, `fluxhook simulate` and `fluxhook demo`.

It speaks BFL's native API (`/v1/...`, `x-key`) and the DeerAPI/CometAPI proxy
shape (`/flux/v1/...`, Bearer), plus Replicate's predictions API and its proxy
shape (`/replicate/v1/...`; see :mod:`submitter.simulator_replicate`). It serves
real PNG/JPEG results behind signed, expiring delivery URLs, and sends webhook
callbacks. Misbehaviour (dropped, duplicated, reordered or badly signed
callbacks, rejected submits, expired URLs, slow downloads...) is chosen per job
by matching rules against the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import struct
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from submitter.signing import sign_bfl

__all__ = ["Faults", "Simulator", "jpeg_image", "png_image", "run_simulator"]

log = logging.getLogger(__name__)

OUTCOMES = {
    "ready": "Ready",
    "error": "Error",
    "request_moderated": "Request Moderated",
    "content_moderated": "Content Moderated",
    # Replicate-only outcomes; a BFL task with one of them ends in "Error".
    "canceled": "Error",
    "aborted": "Error",
}
SIGNATURES = ("hmac", "echo", "none")
IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
#: The counters `Simulator.stats()` totals (besides "tasks").
TOTALS = (
    "submit_requests",
    "submits_rejected",
    "polls",
    "cancels",
    "callbacks_sent",
    "callbacks_failed",
    "deliveries",
    "deliveries_refused",
)
#: What the proxies echo as `polling_url`: upstream BFL, unusable with a proxy key.
UPSTREAM_POLLING_URL = "https://api.eu2.bfl.ai/v1/get_result?id={id}"

#: A 16x16 baseline JPEG (made once with Pillow); a COM segment is added per task.
_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA0JCgsKCA0LCgsODg0PEyAVExISEyccHhcgLikxMC4pLSwzOko+MzZGNywtQFdB"
    "RkxOUlNSMj5aYVpQYEpRUk//2wBDAQ4ODhMREyYVFSZPNS01T09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09P"
    "T09PT09PT09PT09PT0//wAARCAAQABADASIAAhEBAxEB/8QAFQABAQAAAAAAAAAAAAAAAAAABQb/xAAYEAACAwAAAAAAAAAA"
    "AAAAAAAABAUiMf/EABUBAQEAAAAAAAAAAAAAAAAAAAAC/8QAGhEAAgIDAAAAAAAAAAAAAAAAAAUDBCExYf/aAAwDAQACEQMR"
    "AD8AmFY7Ki6sdlRdWOyowrHZUqe90KmOsn//2Q=="
)


@dataclass(frozen=True)
class Faults:
    """How the simulated provider treats one job."""

    drop: bool = False  # send no callbacks at all
    duplicate: int = 1  # send the terminal callback this many times, concurrently
    delay: float = 0.0  # extra seconds between completion and the terminal callback
    reorder: bool = False  # follow the terminal callback with a stale "Pending" one
    bad_signature: bool = False  # sign callbacks with a wrong secret
    signature: str = "hmac"  # "hmac" (X-BFL-Signature), "echo" (X-Webhook-Secret), "none"
    progress: bool = False  # send a "processing" callback before the terminal one
    submit_errors: tuple[int, ...] = ()  # reject the rule's first submits with these statuses
    outcome: str = "ready"  # "ready", "error", "request_moderated", "content_moderated"
    webhook_shape: bool = False  # answer submits like webhook mode: no polling_url
    expired_url: bool = False  # the first signed URL handed out is already expired
    slow_download: float = 0.0  # bytes per second; 0 serves at full speed
    runtime: float = 0.05  # seconds from accept to done
    image_format: str = "png"  # "png" or "jpeg"
    image_size: int = 0  # pad the image file to at least this many bytes
    # Replicate only (BFL tasks ignore these):
    outputs: int = 1  # output files; `output` is a list of URLs when > 1
    output_list: bool = False  # with outputs == 1: a one-URL list (flux-schnell/dev) instead of a string
    drop_completed: bool = False  # send the start/intermediate webhooks but never `completed`

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}")
        if self.signature not in SIGNATURES:
            raise ValueError(f"signature must be one of {SIGNATURES}")
        if self.image_format not in IMAGE_TYPES:
            raise ValueError(f"image_format must be one of {sorted(IMAGE_TYPES)}")
        if min(self.duplicate, self.outputs) < 1:
            raise ValueError("duplicate and outputs must be >= 1")
        if min(self.runtime, self.delay, self.slow_download, self.image_size) < 0:
            raise ValueError("durations, rates and sizes must be >= 0")
        if not all(isinstance(s, int) and 400 <= s <= 599 for s in self.submit_errors):
            raise ValueError("submit_errors must be HTTP error statuses")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faults:
        """Build from JSON values (lists for tuples), rejecting unknown or mistyped fields."""
        defaults = {f.name: f.default for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in defaults:
                raise ValueError(f"unknown fault {name!r}")
            default = defaults[name]
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(default, float) and type(value) is int:
                value = float(value)
            if type(value) is not type(default):
                raise ValueError(f"fault {name!r} must be a {type(default).__name__}")
            values[name] = value
        return cls(**values)


@dataclass
class _Rule:
    prompt_contains: str
    faults: Faults
    rejected: int = 0  # submits answered from faults.submit_errors so far


@dataclass
class _Job:
    id: str
    model: str
    prompt: str
    faults: Faults
    base_url: str
    accepted_at: float
    webhook_url: str | None
    webhook_secret: str | None
    submits: int = 1
    polls: int = 0
    callbacks_sent: int = 0
    deliveries: int = 0
    urls_issued: int = 0

    @property
    def done_at(self) -> float:
        return self.accepted_at + self.faults.runtime

    def files(self, now: float) -> dict[str, str]:
        """The files its delivery URLs may name, each with the seed of its image."""
        return {f"sample.{self.faults.image_format}": self.id}

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "kind": "bfl",
            "model": self.model,
            "prompt": self.prompt,
            "submits": self.submits,
            "polls": self.polls,
            "callbacks_sent": self.callbacks_sent,
            "deliveries": self.deliveries,
            "status": OUTCOMES[self.faults.outcome] if now >= self.done_at else "Pending",
        }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_image(task_id: str, size: int = 0) -> bytes:
    """A 16x16 RGB PNG whose colours and tEXt comment depend on `task_id`."""
    r, g, b = hashlib.sha256(task_id.encode()).digest()[:3]
    rows = b"".join(b"\x00" + b"".join(bytes((r ^ x * 16, g ^ y * 16, b)) for x in range(16)) for y in range(16))
    parts = [
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)),
        _png_chunk(b"tEXt", b"Comment\x00fluxhook simulator task " + task_id.encode()),
        _png_chunk(b"IDAT", zlib.compress(rows)),
    ]
    missing = size - sum(map(len, parts)) - 12  # 12: the IEND chunk
    if missing > 0:  # a private, ancillary, safe-to-copy chunk decoders skip
        parts.append(_png_chunk(b"fhPd", bytes(max(0, missing - 12))))
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def jpeg_image(task_id: str, size: int = 0) -> bytes:
    """The embedded JPEG with COM segments (after APP0) carrying `task_id` and any padding."""
    comments = [b"fluxhook simulator task " + task_id.encode()]
    missing = size - len(_JPEG) - len(comments[0]) - 4
    while missing > 0:
        piece = min(65533, max(1, missing - 4))
        comments.append(bytes(piece))
        missing -= piece + 4
    app0_end = 4 + int.from_bytes(_JPEG[4:6], "big")
    segments = b"".join(b"\xff\xfe" + struct.pack(">H", len(c) + 2) + c for c in comments)
    return _JPEG[:app0_end] + segments + _JPEG[app0_end:]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _azure_error(detail: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
        "<Message>Server failed to authenticate the request. Make sure the value of "
        "Authorization header is formed correctly including the signature.</Message>"
        f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail></Error>"
    )
    return Response(body, 403, media_type="application/xml")


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
        from submitter.simulator_replicate import Replicate, new_webhook_secret  # that module builds on this one

        self._http = http
        self._owns_http = http is None
        self.url_lifetime = url_lifetime
        self.callback_retries = tuple(callback_retries)
        self.clock = clock
        self._default_rule = _Rule("", default_faults)
        self._rules: list[_Rule] = []
        self._jobs: dict[str, _Job] = {}
        self._rejected_by_prompt: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()
        self._url_key = secrets.token_bytes(32)
        self._background: set[asyncio.Task[None]] = set()
        self.replicate_secret = replicate_secret or new_webhook_secret()
        self.proxy_secret = proxy_secret or new_webhook_secret()
        self.replicate_url_lifetime = replicate_url_lifetime
        self.replicate_data_lifetime = replicate_data_lifetime
        self._replicate = Replicate(self)
        self.app = Starlette(
            routes=[
                *self._replicate.routes(),
                Route("/v1/get_result", partial(self._get_result, proxy=False), methods=["GET"]),
                Route("/v1/{model}", partial(self._submit, proxy=False), methods=["POST"]),
                Route("/flux/v1/get_result", partial(self._get_result, proxy=True), methods=["GET"]),
                Route("/flux/v1/{model}", partial(self._submit, proxy=True), methods=["POST"]),
                Route("/delivery/{task_id}/{filename}", self._delivery, methods=["GET"]),
                Route("/_sim/rules", self._add_rule_http, methods=["POST"]),
                Route("/_sim/stats", self._stats_http, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # -- configuration and inspection ---------------------------------------------

    @property
    def default_faults(self) -> Faults:
        return self._default_rule.faults

    @default_faults.setter
    def default_faults(self, faults: Faults) -> None:
        self._default_rule = _Rule("", faults)

    def add_rule(self, prompt_contains: str, faults: Faults) -> None:
        """Give jobs whose prompt contains `prompt_contains` these faults (first match wins)."""
        self._rules.append(_Rule(prompt_contains, faults))

    def stats(self) -> dict[str, Any]:
        """Per-task counters and totals. A task's `submits` includes the rejected
        attempts with the same prompt that preceded it."""
        now = self.clock()
        tasks = {job.id: job.stats(now) for job in self._jobs.values()}
        totals = {"tasks": len(tasks)} | {name: self._totals[name] for name in TOTALS}
        return {"tasks": tasks, "totals": totals}

    async def drain(self) -> None:
        """Wait until every callback and other background work has finished."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel background work and close the HTTP client if this simulator made it."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()

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
        self._totals["submit_requests"] += 1
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
        faults = self._screen(prompt)
        if isinstance(faults, int):
            headers = {"Retry-After": "0"} if faults == 429 else None
            return JSONResponse({"detail": "simulated"}, faults, headers=headers)
        job = _Job(
            id=str(uuid.uuid4()),
            model=request.path_params["model"],
            prompt=prompt,
            faults=faults,
            base_url=str(request.base_url).rstrip("/"),
            accepted_at=self.clock(),
            webhook_url=webhook_url or None,
            webhook_secret=body.get("webhook_secret") or None,
            submits=1 + self._rejected_by_prompt.pop(prompt, 0),
        )
        self._jobs[job.id] = job
        if job.webhook_url and not job.faults.drop:
            self._spawn(self._send_callbacks(job))
        if job.faults.webhook_shape:
            return JSONResponse({"id": job.id, "status": "Pending", "webhook_url": webhook_url})
        if proxy:
            polling_url = UPSTREAM_POLLING_URL.format(id=job.id)
            return JSONResponse(
                {"id": job.id, "polling_url": polling_url, "cost": None, "input_mp": None, "output_mp": None}
            )
        polling_url = f"{job.base_url}/v1/get_result?id={quote(job.id)}"
        return JSONResponse({"id": job.id, "polling_url": polling_url, "cost": 1.0, "input_mp": 0.0, "output_mp": 1.0})

    def _screen(self, prompt: str) -> Faults | int:
        """The faults of a new job with this prompt, or the HTTP status rejecting this submit.

        A rejected prompt's count goes to `_rejected_by_prompt`; pop it into the accepted job's `submits`.
        """
        rule = next((r for r in self._rules if r.prompt_contains in prompt), self._default_rule)
        if rule.rejected < len(rule.faults.submit_errors):
            status = rule.faults.submit_errors[rule.rejected]
            rule.rejected += 1
            self._rejected_by_prompt[prompt] += 1
            self._totals["submits_rejected"] += 1
            return status
        return rule.faults

    async def _get_result(self, request: Request, *, proxy: bool) -> Response:
        if (denied := self._auth_error(request, proxy)) is not None:
            return denied
        self._totals["polls"] += 1
        task_id = request.query_params.get("id", "")
        job = self._jobs.get(task_id)
        if job is None:
            return JSONResponse({"id": task_id, "status": "Task not found"})
        job.polls += 1
        now = self.clock()
        if now < job.done_at:
            progress = int(100 * (now - job.accepted_at) / job.faults.runtime) if job.faults.runtime else 0
            return JSONResponse(self._body(job, "Pending", progress=max(0, min(99, progress))))
        return JSONResponse(self._terminal_body(job))

    @staticmethod
    def _body(job: _Job, status: str, **extra: Any) -> dict[str, Any]:
        body = {"id": job.id, "status": status, "result": None, "progress": None, "details": None, "preview": None}
        return body | extra

    def _terminal_body(self, job: _Job) -> dict[str, Any]:
        status = OUTCOMES[job.faults.outcome]
        if status == "Error":
            return self._body(job, status, details={"error": "simulated failure"})
        if status != "Ready":
            return self._body(job, status, details={"Moderation Reasons": ["Simulated"]})
        result = {
            "sample": self._signed_url(job),
            "seed": 42,
            "prompt": job.prompt,
            "start_time": job.accepted_at,
            "end_time": job.done_at,
            "duration": job.faults.runtime,
        }
        return self._body(job, status, result=result)

    # -- delivery --------------------------------------------------------------------

    def _url_signature(self, task_id: str, filename: str, expiry: str) -> str:
        message = f"{task_id}\n{filename}\n{expiry}".encode(errors="replace")
        return hmac.new(self._url_key, message, hashlib.sha256).hexdigest()

    def _url_expiry(self, job: _Job, lifetime: float) -> float:
        """When the URL(s) handed out next expire; under `expired_url` the first ones already have."""
        now = self.clock()
        expired = job.faults.expired_url and job.urls_issued == 0
        job.urls_issued += 1
        return now - 60 if expired else now + lifetime

    def _delivery_url(self, job: _Job, filename: str, expires_at: float) -> str:
        expiry = _iso(expires_at)
        query = f"se={quote(expiry, safe='')}&sp=r&sig={self._url_signature(job.id, filename, expiry)}"
        return f"{job.base_url}/delivery/{quote(job.id)}/{quote(filename)}?{query}"

    def _signed_url(self, job: _Job) -> str:
        filename = f"sample.{job.faults.image_format}"
        return self._delivery_url(job, filename, self._url_expiry(job, self.url_lifetime))

    async def _delivery(self, request: Request) -> Response:
        task_id, filename = request.path_params["task_id"], request.path_params["filename"]
        expiry = request.query_params.get("se", "")
        given = request.query_params.get("sig", "")
        expected = self._url_signature(task_id, filename, expiry)
        if not hmac.compare_digest(expected.encode(), given.encode(errors="replace")):
            self._totals["deliveries_refused"] += 1
            return _azure_error("Signature did not match.")
        job = self._jobs.get(task_id)
        seed = None if job is None else job.files(self.clock()).get(filename)
        if job is None or seed is None:  # never existed, or removed (Replicate's data_removed)
            return Response("<Error><Code>BlobNotFound</Code></Error>", 404, media_type="application/xml")
        if datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() <= self.clock():
            self._totals["deliveries_refused"] += 1
            return _azure_error(f"Signed expiry time [{expiry}] has to be after the current time.")
        job.deliveries += 1
        self._totals["deliveries"] += 1
        make = png_image if job.faults.image_format == "png" else jpeg_image
        data = make(seed, job.faults.image_size)
        media_type = IMAGE_TYPES[job.faults.image_format]
        rate = job.faults.slow_download
        if not rate:
            return Response(data, media_type=media_type)

        async def trickle() -> AsyncIterator[bytes]:
            step = max(1, int(rate / 20))
            for start in range(0, len(data), step):
                piece = data[start : start + step]
                yield piece
                await asyncio.sleep(len(piece) / rate)

        return StreamingResponse(trickle(), media_type=media_type, headers={"content-length": str(len(data))})

    # -- callbacks -------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_callbacks(self, job: _Job) -> None:
        try:
            faults = job.faults
            if faults.progress:
                await asyncio.sleep(faults.runtime / 2)
                await self._post_bfl(job, {"task_id": job.id, "status": "processing", "progress": 50})
            await asyncio.sleep((faults.runtime / 2 if faults.progress else faults.runtime) + faults.delay)
            body = json.dumps(self._terminal_body(job)).encode()
            await asyncio.gather(*(self._post_with_retries(job, body) for _ in range(faults.duplicate)))
            if faults.reorder:
                await self._post_bfl(job, {"task_id": job.id, "status": "Pending", "progress": 10})
        except Exception:  # a background task must never die noisily
            log.exception("simulator: callbacks for task %s failed", job.id)

    async def _post_with_retries(self, job: _Job, body: bytes) -> None:
        for pause in (*self.callback_retries, None):
            if await self._post_bfl(job, body):
                return
            if pause is not None:
                await asyncio.sleep(pause)
        self._totals["callbacks_failed"] += 1

    async def _post_bfl(self, job: _Job, body: bytes | dict[str, Any]) -> bool:
        """POST one BFL-style callback, signed as the job's faults say."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        if job.webhook_secret:
            secret = "wrong-" + job.webhook_secret if job.faults.bad_signature else job.webhook_secret
            if job.faults.signature == "hmac":
                headers["x-bfl-signature"] = sign_bfl(secret, raw)
            elif job.faults.signature == "echo":
                headers["x-webhook-secret"] = secret
        return await self._post(job, raw, headers)

    async def _post(self, job: _Job, raw: bytes, headers: dict[str, str]) -> bool:
        """POST one callback to the job's webhook URL; True when the receiver answered 2xx."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30.0)
        job.callbacks_sent += 1
        self._totals["callbacks_sent"] += 1
        try:
            response = await self._http.post(str(job.webhook_url), content=raw, headers=headers)
        except httpx.HTTPError:
            return False
        return response.is_success

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
        self.add_rule(prompt_contains, faults)
        return JSONResponse({"ok": True, "rules": len(self._rules)})

    async def _stats_http(self, request: Request) -> Response:
        return JSONResponse(self.stats())


def run_simulator(host: str = "127.0.0.1", port: int = 8900, **kwargs: Any) -> None:
    """Serve a :class:`Simulator` (built with `kwargs`) with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(Simulator(**kwargs).app, host=host, port=port, log_level="warning")

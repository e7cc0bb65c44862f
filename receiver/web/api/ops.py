"""Operators' endpoints: `GET /metrics` (Prometheus) and `GET /readyz` (can this process do its work?).

`/metrics` is protected like the API: with FLUXHOOK_API_KEYS set, any API key is accepted as
`Authorization: Bearer <key>`; FLUXHOOK_METRICS_TOKEN adds a token good for /metrics only. With
neither set it is open (fluxhook listens on loopback by default: put it behind your proxy).

`/readyz` answers 200 ``{"ready": true}`` when the database answers and a probe file can be written
to and removed from the result store; else 503 ``{"ready": false, "problems": [...]}`` naming each
problem. `/healthz` stays a liveness check (the process answers), never touching either.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.web.auth import constant_time_match

if TYPE_CHECKING:
    from receiver.engine.runtime import Runtime
    from receiver.results import ResultStore

__all__ = ["PROBE_TIMEOUT", "metrics", "ops_routes", "probe_results", "readyz"]

#: Seconds each readiness check may take before it counts as failed.
PROBE_TIMEOUT = 5.0


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _authorized(request: Request, rt: Runtime) -> bool:
    allowed = [*rt.settings.integrations.api_keys]
    if rt.settings.metrics_token:
        allowed.append(rt.settings.metrics_token)
    if not allowed:
        return True
    scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and constant_time_match(given.strip(), allowed) is not None


async def metrics(request: Request) -> Response:
    rt = _runtime(request)
    if not _authorized(request, rt):
        return JSONResponse({"error": "a valid token is required: Authorization: Bearer <token>"}, status_code=401,
                            headers={"www-authenticate": "Bearer"})
    body = await rt.prom.render(rt.store)
    return Response(body, media_type=rt.prom.content_type, headers={"cache-control": "no-store"})


async def probe_results(results: ResultStore) -> str | None:
    """Write a small probe object through the result store and delete it: None, or what is wrong."""
    name = f".readyz-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.probe"
    folder = getattr(results, "folder", None)
    if isinstance(folder, Path):
        return await asyncio.to_thread(_probe_folder, folder, name)
    store = getattr(results, "store", None)
    full = getattr(results, "full", None)
    if store is not None and callable(full):  # S3: put and delete a small object
        from receiver.results.s3 import _obstore

        ob = _obstore()
        key = full(name)
        try:
            await ob.put_async(store, key, b"fluxhook readiness probe\n")
        except Exception as exc:
            return f"results: {results.url} is not writable: {_brief(exc)}"
        try:
            await ob.delete_async(store, key)
        except Exception as exc:
            return f"results: {results.url}: probe object {name} written but not deleted: {_brief(exc)}"
        return None
    return None  # an unknown store: nothing to probe without writing a result


def _probe_folder(folder: Path, name: str) -> str | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / name
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"fluxhook readiness probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return f"results: {folder} is not writable: {exc.strerror or type(exc).__name__}"
    return None


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


async def _check_store(rt: Runtime) -> str | None:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await rt.store.last_seq()  # type: ignore[attr-defined]
    except TimeoutError:
        return f"database: no answer within {PROBE_TIMEOUT:.0f} s"
    except Exception as exc:
        return f"database: {rt.redactor.scrub(str(exc)) or type(exc).__name__}"
    return None


async def _check_results(rt: Runtime) -> str | None:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return await probe_results(rt.results)
    except TimeoutError:
        return f"results: {rt.results.url}: no answer within {PROBE_TIMEOUT:.0f} s"


async def readyz(request: Request) -> JSONResponse:
    rt = _runtime(request)
    problems = [p for p in await asyncio.gather(_check_store(rt), _check_results(rt)) if p]
    if rt.stopping.is_set():
        problems.append("shutting down")
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503,
                            headers={"cache-control": "no-store", "retry-after": "5"})
    return JSONResponse({"ready": True}, headers={"cache-control": "no-store"})


def ops_routes() -> list[Route]:
    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]

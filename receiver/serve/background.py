"""Run an ASGI app with uvicorn inside the current event loop (demo, tests, benchmarks),
with the same connection limits as `fluxhook serve` (receiver/serve/server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from receiver.config.settings import Settings
from receiver.serve.server import uvicorn_config

__all__ = ["bind", "serve_in_background"]


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@contextlib.asynccontextmanager
async def serve_in_background(
    app: Any, sock: socket.socket | None = None, *, settings: Settings | None = None, **config: Any
) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields its base URL.

    The server's limits (header size and deadline, connections, idle keep-alive) are
    `settings`', by default Settings' own defaults; `config` are further uvicorn.Config
    arguments.
    """
    sock = sock or bind()
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn_config(app, settings or Settings(), **{"log_level": "warning", **config}))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()

"""How many connections the server takes, and how many of them only provider callbacks may use.

`connection_cap` fits FLUXHOOK_MAX_CONNECTIONS under the open-file limit. `HookReserve` keeps the last
FLUXHOOK_HOOKS_RESERVED of those connections for `POST /hooks/...`: the connection guard
(receiver/serve/server.py) refuses a connection before its path is known, so the reserve is kept
where the path is known, around the app. Requests to anything else (the API, its event streams and
long-polls, the UI) are counted while the app answers them; with `cap - reserved` of them in flight,
one more is answered 503 with Retry-After and its connection closed, without reaching the app. So
whatever holds connections open through the app (streams kept alive by heartbeats, long-polls), a
callback still finds a connection. The health probes (`/healthz`, `/readyz`) are answered at once
and never refused for this: a load balancer must not take a busy receiver out of service.
"""

from __future__ import annotations

import functools
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.config.settings import Settings
from receiver.obs.logs import LogLimiter

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]  # the module does not exist on Windows

__all__ = ["FD_RESERVE", "RETRY_AFTER", "HookReserve", "connection_cap", "hooks_reserved", "raise_open_file_limit"]

log = logging.getLogger("fluxhook.server")

#: Descriptors never given to client connections: listener, SQLite, logs, provider API connections.
FD_RESERVE = 64
#: Seconds a refused client is asked to wait before it connects again.
RETRY_AFTER = 5
#: Paths answered whatever else is in flight: the callbacks (a prefix) and the health probes.
HOOKS = "/hooks/"
PROBES = frozenset({"/healthz", "/readyz"})


def raise_open_file_limit() -> int | None:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (best effort); the soft limit
    after, or None if it is unknown or unlimited."""
    if resource is None:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. macOS refuses RLIM_INFINITY
            log.info("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(settings: Settings, open_files: int | None) -> int:
    """`max_connections`, lowered (with a warning) to leave descriptors for everything else."""
    if open_files is None:
        return settings.max_connections
    room = open_files - FD_RESERVE - 2 * settings.download_concurrency  # a socket and a file each
    if settings.max_connections <= room:
        return settings.max_connections
    cap = max(1, room)
    log.warning(
        "FLUXHOOK_MAX_CONNECTIONS=%d does not fit under the open-file limit of %d: allowing %d connections;"
        " raise the limit (ulimit -n, systemd LimitNOFILE=) or lower FLUXHOOK_MAX_CONNECTIONS",
        settings.max_connections, open_files, cap,
    )
    return cap


def hooks_reserved(settings: Settings, cap: int) -> int:
    """Connections of `cap` only callbacks may use: FLUXHOOK_HOOKS_RESERVED, scaled down with the cap
    when the open-file limit lowered it, and always leaving one for everything else."""
    reserved = settings.capacity.hooks_reserved
    if cap < settings.max_connections:
        reserved = max(1, reserved * cap // settings.max_connections)
    return max(0, min(reserved, cap - 1))


class HookReserve:
    """At most `allowed` requests other than callbacks and health probes in flight at once, in one server."""

    def __init__(self, allowed: int, refusals: LogLimiter) -> None:
        self.allowed = allowed
        self.refusals = refusals
        #: Requests to anything but callbacks and probes that the app is answering now.
        self.busy = 0

    def around(self, app: ASGIApp) -> ASGIApp:
        """`app`, with this reserve kept in front of it."""
        return functools.partial(self.serve, app)

    async def serve(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await app(scope, receive, send)
            return
        if self.busy >= self.allowed:
            self.refusals.log(logging.WARNING, "reserve", "%d requests other than callbacks in flight: answered"
                              " 503 to one more (FLUXHOOK_HOOKS_RESERVED connections are kept for callbacks)",
                              self.allowed)
            await _unavailable(send)
            return
        self.busy += 1
        try:
            await app(scope, receive, send)
        finally:
            self.busy -= 1

    @staticmethod
    def _exempt(scope: Scope) -> bool:
        path: str = scope.get("path", "")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return path.startswith(HOOKS) or path in PROBES


async def _unavailable(send: Send) -> None:
    body = b"Service Unavailable: connections are reserved for provider callbacks; retry later"
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

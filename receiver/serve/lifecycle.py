"""`fluxhook serve`'s start and stop at the edges: a port in use is said before anything starts, a first
Ctrl-C (or SIGTERM) says what the shutdown waits for, and a second one stops at once.

Starting: the address is tried (bound and closed, as asyncio will bind it: SO_REUSEADDR, so a socket in
TIME_WAIT is no obstacle but a listening one is) before uvicorn starts the app, so a port in use is
:class:`CannotListen` naming it, not uvicorn's `Errno 98` logged after "Application startup complete".

Stopping: :class:`StoppingServer` is uvicorn's Server with its documented `handle_exit` hook overridden.
The first signal stops as uvicorn does (no new connections, then the app's lifespan drains the
background work for FLUXHOOK_DRAIN_TIMEOUT, receiver/web/app.py) and logs what it waits for: the
downloads, polls and submits in progress (Runtime.at_work) and open connections. A second signal
exits at once (status 128 + signal: 130 for Ctrl-C): nothing is lost, as after a crash
(README "How it works": leases lapse after FLUXHOOK_LEASE_SECONDS and another sweep finishes the
jobs; a partial download is a temp file the next holder removes). It writes with `os.write` and
exits with `os._exit`: a signal handler may interrupt a write to stderr, and the event loop may be
the thing stuck.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from receiver.config.settings import Settings
from receiver.serve.server import uvicorn_config

__all__ = ["CannotListen", "NotStarted", "StoppingServer", "check_listen", "run", "stop_notice"]

log = logging.getLogger("fluxhook.server")


class CannotListen(Exception):
    """The address cannot be listened on (a port in use, an address not on this machine...)."""

    def __init__(self, host: str, port: int, reason: int | None, text: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(text)

    @property
    def in_use(self) -> bool:
        """Another socket listens there already."""
        return self.reason == errno.EADDRINUSE


class NotStarted(Exception):
    """uvicorn did not start the app (its lifespan failed: the log says why)."""


def check_listen(host: str, port: int) -> None:
    """CannotListen unless every address `host` names can listen on `port` now (what asyncio's
    create_server, and so uvicorn, will bind; a socket family this machine lacks is skipped, as it does)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(host, port, None, f"cannot listen on {host}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CannotListen(host, port, exc.errno, f"port {port} is in use") from None
                raise CannotListen(host, port, exc.errno,
                                   f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def stop_notice(app: Any, settings: Settings, connections: int, sig: int) -> str:
    """What a first stop signal is told: what the shutdown waits for, for how long, and how to cut it short."""
    runtime = getattr(getattr(app, "state", None), "runtime", None)
    at_work = getattr(runtime, "at_work", {})
    work = [_count(at_work.get(kind, 0), kind) for kind in ("download", "poll", "submit") if at_work.get(kind, 0)]
    again = "Ctrl-C again" if sig == signal.SIGINT else f"a second {signal.Signals(sig).name}"
    if not work and not connections:
        return "stopping: nothing in progress"
    # uvicorn waits for open connections first, as long as they stay open (an event stream ends when its client
    # goes), then the app's lifespan gives the background work FLUXHOOK_DRAIN_TIMEOUT.
    waits = ([f"{_count(connections, 'open connection')} to close"] if connections else []) + (
        [f"up to {settings.drain_timeout:g} s (FLUXHOOK_DRAIN_TIMEOUT) for {' and '.join(work)} in progress"]
        if work else [])
    return (f"stopping: no new work is taken; waiting for {', then '.join(waits)}. {again} stops at once; "
            f"nothing is lost: unfinished jobs are taken over by the next sweep when their leases lapse "
            f"(FLUXHOOK_LEASE_SECONDS, {settings.lease_seconds:g} s)")


class StoppingServer(uvicorn.Server):
    """uvicorn's Server: the first stop signal also logs what the shutdown waits for
    (:func:`stop_notice`); a second one exits at once."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.stop_now(sig)
        super().handle_exit(sig, frame)
        if self.loop is not None:
            # Logged from the loop, not from inside the signal handler (it may have interrupted a log write).
            self.loop.call_soon_threadsafe(self.say_stopping, sig)

    def say_stopping(self, sig: int) -> None:
        connections = len(self.server_state.connections)
        log.warning("%s", stop_notice(self.config.app, self.settings, connections, sig))

    def stop_now(self, sig: int) -> None:
        """Exit at once, saying so on stderr (not through logging: this runs inside a signal handler)."""
        os.write(2, (f"stopping now ({signal.Signals(sig).name} again); nothing is lost: unfinished jobs are "
                     f"taken over by the next sweep when their leases lapse (FLUXHOOK_LEASE_SECONDS, "
                     f"{self.settings.lease_seconds:g} s)\n").encode())
        os._exit(128 + sig)


def run(app: Any, settings: Settings, **overrides: Any) -> None:
    """Serve `app` until a signal stops it (like uvicorn.run, with `settings`' limits). CannotListen
    before anything starts if the address cannot be listened on; NotStarted if the app did not start."""
    config = uvicorn_config(app, settings, **overrides)
    check_listen(config.host, config.port)
    server = StoppingServer(config, settings)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn's way of saying the lifespan or the bind failed (logged)
        if exc.code != STARTUP_FAILURE:
            raise
        raise NotStarted("the receiver did not start (the log above says why)") from None
    if not server.started:
        raise NotStarted("the receiver did not start (the log above says why)")

"""A tiny round-robin HTTP forwarder on loopback: several receiver replicas behind one callback URL.

Each incoming request goes to the next backend in turn, body and headers passed through unchanged
(hop-by-hop headers aside), and the backend's answer comes back as it was. Like a load balancer, it
neither retries nor skips a backend that is down: a request it cannot forward (refused, reset, timed
out) is answered 502, marked with the `x-roundrobin-error` header, and the sender retries as it
would against any proxy. Every forwarded request is logged (:class:`Forwarded`) so a test can tell a
502 for a killed replica from an error a receiver answered itself.

    rr = RoundRobin(["http://127.0.0.1:8001", "http://127.0.0.1:8002"])
    async with serve_in_background(rr.app) as url:
        ...  # point FLUXHOOK_PUBLIC_URL at `url`
    await rr.aclose()

Used by tests/e2e/test_replicas.py and `python -m bench.soak --replicas N`.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["ERROR_HEADER", "Forwarded", "RoundRobin", "is_forwarder_error"]

#: Set on the 502 answers the forwarder makes itself (never on a backend's own answer).
ERROR_HEADER = "x-roundrobin-error"
#: Not forwarded either way (RFC 9110 section 7.6.1), plus what httpx or uvicorn set afresh.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "host", "content-length", "content-encoding", "date", "server",
})
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True)
class Forwarded:
    """One request as the forwarder handled it; times from the forwarder's clock."""

    backend: int
    method: str
    path: str
    started: float
    ended: float
    status: int
    #: Why it could not be forwarded (the 502 is the forwarder's own), else None.
    error: str | None = None


def is_forwarder_error(response: httpx.Response) -> bool:
    """True for a 502 the forwarder made because it could not reach a backend."""
    return response.status_code == 502 and ERROR_HEADER in response.headers


class RoundRobin:
    """The forwarder: `app` is its ASGI app; `backends` base URLs, taken in turn.

    Connections to backends are not kept alive: a killed (or idle-closing) backend never leaves a
    dead pooled connection that would turn a request to a live replica into a 502.
    """

    def __init__(
        self, backends: Sequence[str], *, timeout: float = 20.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not backends:
            raise ValueError("at least one backend is needed")
        self.backends = [b.rstrip("/") for b in backends]
        self.clock = clock
        self.log: list[Forwarded] = []
        self._turn = itertools.count()
        self._http = httpx.AsyncClient(
            timeout=timeout, trust_env=False, follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=METHODS)])

    async def aclose(self) -> None:
        await self._http.aclose()

    def answers(self) -> Counter[int]:
        """Statuses answered so far, the forwarder's own 502s included."""
        return Counter(f.status for f in self.log)

    def per_backend(self) -> Counter[int]:
        return Counter(f.backend for f in self.log)

    async def _forward(self, request: Request) -> Response:
        backend = next(self._turn) % len(self.backends)
        started = self.clock()
        body = await request.body()
        target = self.backends[backend] + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        try:
            answer = await self._http.request(request.method, target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
            self.log.append(Forwarded(backend, request.method, request.url.path, started, self.clock(), 502, error))
            return Response(f"bad gateway: backend {backend} did not answer\n", 502, media_type="text/plain",
                            headers={ERROR_HEADER: type(exc).__name__})
        self.log.append(Forwarded(backend, request.method, request.url.path, started, self.clock(),
                                  answer.status_code))
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return Response(answer.content, answer.status_code, headers=kept)


if __name__ == "__main__":
    from bench._cli import describe

    describe(__doc__)

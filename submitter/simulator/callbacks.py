"""The simulator's side of webhooks: one POST to a job's webhook URL, over a client it may own."""

from __future__ import annotations

import httpx

from submitter.simulator.state import Job, SimState

__all__ = ["Poster"]


class Poster:
    """POSTs callbacks over `http`, or over a client of its own made on first use (closed by :meth:`aclose`)."""

    def __init__(self, state: SimState, http: httpx.AsyncClient | None) -> None:
        self.state = state
        self._http = http
        self._owns_http = http is None

    async def post(self, job: Job, raw: bytes, headers: dict[str, str]) -> bool:
        """POST one callback to the job's webhook URL; True when the receiver answered 2xx."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30.0)
        job.callbacks_sent += 1
        self.state.count("callbacks_sent")
        try:
            response = await self._http.post(str(job.webhook_url), content=raw, headers=headers)
        except httpx.HTTPError:
            return False
        return response.is_success

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

"""Result files behind signed, expiring URLs (shaped like Azure Blob SAS URLs), and the route serving them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from submitter.simulator.faults import IMAGE_FORMATS
from submitter.simulator.images import jpeg_image, png_image
from submitter.simulator.state import Job, SimState

__all__ = ["Delivery"]

_EXPIRY = "%Y-%m-%dT%H:%M:%SZ"


def _azure_error(detail: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
        "<Message>Server failed to authenticate the request. Make sure the value of "
        "Authorization header is formed correctly including the signature.</Message>"
        f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail></Error>"
    )
    return Response(body, 403, media_type="application/xml")


class Delivery:
    """Hands out signed URLs for a job's files and serves them (`GET /delivery/{task_id}/{filename}`)."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._url_key = secrets.token_bytes(32)

    def _signature(self, task_id: str, filename: str, expiry: str) -> str:
        message = f"{task_id}\n{filename}\n{expiry}".encode(errors="replace")
        return hmac.new(self._url_key, message, hashlib.sha256).hexdigest()

    def expiry(self, job: Job, lifetime: float) -> float:
        """When the URL(s) handed out next expire; under `expired_url` the first ones already have."""
        now = self.state.clock()
        expired = job.faults.expired_url and job.urls_issued == 0
        job.urls_issued += 1
        return now - 60 if expired else now + lifetime

    def url(self, job: Job, filename: str, expires_at: float) -> str:
        expiry = datetime.fromtimestamp(expires_at, UTC).strftime(_EXPIRY)
        query = f"se={quote(expiry, safe='')}&sp=r&sig={self._signature(job.id, filename, expiry)}"
        return f"{job.base_url}/delivery/{quote(job.id)}/{quote(filename)}?{query}"

    async def serve(self, request: Request) -> Response:
        task_id, filename = request.path_params["task_id"], request.path_params["filename"]
        expiry = request.query_params.get("se", "")
        given = request.query_params.get("sig", "")
        expected = self._signature(task_id, filename, expiry)
        if not hmac.compare_digest(expected.encode(), given.encode(errors="replace")):
            self.state.count("deliveries_refused")
            return _azure_error("Signature did not match.")
        job = self.state.job(task_id)
        seed = None if job is None else job.files(self.state.clock()).get(filename)
        if job is None or seed is None:  # never existed, or removed (Replicate's data_removed)
            return Response("<Error><Code>BlobNotFound</Code></Error>", 404, media_type="application/xml")
        if datetime.strptime(expiry, _EXPIRY).replace(tzinfo=UTC).timestamp() <= self.state.clock():
            self.state.count("deliveries_refused")
            return _azure_error(f"Signed expiry time [{expiry}] has to be after the current time.")
        job.deliveries += 1
        self.state.count("deliveries")
        make = png_image if job.faults.image_format == "png" else jpeg_image
        data = make(seed, job.faults.image_size)
        media_type = IMAGE_FORMATS[job.faults.image_format]
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

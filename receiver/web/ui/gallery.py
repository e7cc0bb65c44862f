"""The gallery at `/ui`: every stored image, newest first, and `/ui/events`, the live stream that adds
new ones to it (like /v1/events, with the session cookie)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from receiver.engine.runtime import Runtime
from receiver.store import JobSummary, OutboxEvent, iso
from receiver.web.sse import HEADERS, frames
from receiver.web.streams import HeldStream, TooManyStreams, stream_limits
from receiver.web.ui.pages import (
    alt_text,
    caller,
    cursor_of,
    file_url,
    page,
    parse_cursor,
    prompt_of,
    render,
    resource,
    runtime,
)
from submitter.status import Status

__all__ = ["events", "gallery"]

log = logging.getLogger("fluxhook.ui")

GALLERY_SIZE = 24


async def _tiles(rt: Runtime, jobs: list[JobSummary]) -> list[dict[str, Any]]:
    tiles = []
    for job in jobs:
        for record in await rt.store.files(job.id):
            if record.stored:
                tiles.append({"job": job, "n": record.n, "src": file_url(job.id, record.n),
                              "alt": alt_text(job, record.n), "prompt": prompt_of(job),
                              "href": f"/ui/jobs/{quote(job.id, safe='')}"})
    return tiles


@page
async def gallery(request: Request) -> Response:
    rt = runtime(request)
    before = parse_cursor(request.query_params.get("before"))
    head = await rt.feed.head()  # read first: the live stream resumes here, so nothing stored since is missed
    jobs = await rt.store.job_summaries(Status.STORED, GALLERY_SIZE, before=before,
                                        created_by=caller(request).owner_filter())
    tiles = await _tiles(rt, jobs)
    older = ("/ui?" + urlencode({"before": cursor_of(jobs[-1])})) if len(jobs) == GALLERY_SIZE else None
    return render(request, "gallery.html", {"title": "Gallery", "tiles": tiles, "older": older,
                                            "live": before is None,
                                            "head": head})


@resource
async def events(request: Request) -> Response:
    """`job.stored` events as SSE (the gallery's live feed): like /v1/events, with the session cookie.
    Counted with /v1's streams against the same caps, per key (receiver/web/streams.py): 429 beyond them."""
    rt = runtime(request)
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    after = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else await rt.feed.head()
    if request.method == "HEAD":  # the headers of the stream, without the stream (it never ends)
        return Response(media_type="text/event-stream", headers={"cache-control": "no-cache"})
    try:
        slot = stream_limits(request).acquire(caller(request).name)
    except TooManyStreams as exc:
        return PlainTextResponse(exc.message, 429, headers={"retry-after": str(exc.retry_after),
                                                            "cache-control": "no-store"})
    return HeldStream(slot, _frames(rt, after, caller(request).owner_filter()), media_type="text/event-stream",
                      headers=HEADERS)


def _frames(rt: Runtime, after: int, created_by: str | None = None) -> AsyncIterator[str]:
    """The live feed's frames from outbox position `after`: each stored job's new images (of the jobs the
    key named `created_by` created, if not None)."""

    async def images(event: OutboxEvent) -> bytes:
        job_id = event.job_id
        job = await rt.store.get_summary(job_id)
        tiles = await _tiles(rt, [job]) if job is not None else []
        data = {"job_id": job_id, "href": f"/ui/jobs/{quote(job_id, safe='')}", "stored_at":
                iso(job.updated_at) if job else None,
                "provider": job.provider if job else None,
                "images": [{"src": t["src"], "alt": t["alt"], "prompt": t["prompt"]} for t in tiles]}
        return json.dumps(data, separators=(",", ":")).encode()

    stream = rt.feed.stream(after, types=frozenset({"job.stored"}), heartbeat=rt.settings.integrations.sse_heartbeat,
                            created_by=created_by)
    return frames(stream, images, log, "ui event stream")

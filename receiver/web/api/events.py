"""`GET /v1/events`: the outbox as server-sent events, resumable by sequence number.

Each event is `id: <seq>`, `event: <type>`, `data: <envelope JSON on one line>`; a
`: heartbeat` comment goes out whenever `sse_heartbeat` seconds pass without one, so
proxies keep the connection and clients notice a dead one. A client resumes with the
`Last-Event-ID` header (browsers send it by themselves) or `?after=SEQ`: it gets every
event after that one, in order, none twice. Without either it gets what happens after it
connected. A `submit` key gets the events of the jobs it created, and no others. The
generator ends when the client goes away (Starlette cancels it on disconnect).
A key holds at most FLUXHOOK_MAX_STREAMS_PER_KEY streams and long-polls at once, the server
FLUXHOOK_MAX_STREAMS: one more is 429 `too_many_streams` with Retry-After (receiver/web/streams.py).
"""

from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.responses import Response

from receiver.config.integrations import EVENT_TYPES
from receiver.engine.runtime import Runtime
from receiver.store import OutboxEvent
from receiver.web.api.auth import authenticate
from receiver.web.api.errors import api_endpoint, invalid
from receiver.web.api.models import EVENT_TYPES_PATTERN, JOB_ID_PATTERN
from receiver.web.sse import HEADERS, frames
from receiver.web.streams import HeldStream, stream_limits

__all__ = ["events"]

log = logging.getLogger("fluxhook.api")

_SEQ = re.compile(r"[0-9]{1,18}")
_JOB = re.compile(JOB_ID_PATTERN)
_TYPES = re.compile(EVENT_TYPES_PATTERN)


def _resume_point(request: Request) -> int | None:
    header = request.headers.get("last-event-id")
    if header is not None:
        if not _SEQ.fullmatch(header.strip()):
            raise invalid("Last-Event-ID", "Last-Event-ID must be an event's seq (a non-negative integer)")
        return int(header.strip())
    after = request.query_params.get("after")
    if after is not None:
        if not _SEQ.fullmatch(after):
            raise invalid("after", "after must be an event's seq (a non-negative integer)")
        return int(after)
    return None


def _types(request: Request) -> frozenset[str] | None:
    raw = request.query_params.get("types")
    if raw is None:
        return None
    if not _TYPES.fullmatch(raw):
        raise invalid("types", f"types must be comma-separated event types (no spaces) among {', '.join(EVENT_TYPES)}")
    return frozenset(raw.split(","))


@api_endpoint
async def events(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    key = authenticate(request)
    job_id = request.query_params.get("job")
    if job_id is not None and not _JOB.fullmatch(job_id):
        raise invalid("job", "job must be a job id")
    types = _types(request)
    after = _resume_point(request)
    if after is None:
        after = await rt.feed.head()
    if request.method == "HEAD":  # the headers of the stream, without the stream (it never ends)
        return Response(media_type="text/event-stream", headers=HEADERS)
    slot = stream_limits(request).acquire(key.name)  # 429 when the key or the server holds too many
    heartbeat = rt.settings.integrations.sse_heartbeat
    stream = rt.feed.stream(after, job_id=job_id, types=types, heartbeat=heartbeat, created_by=key.owner_filter())
    return HeldStream(slot, frames(stream, _body, log, "event stream"), media_type="text/event-stream",
                      headers=HEADERS)


async def _body(event: OutboxEvent) -> bytes:
    return event.body()

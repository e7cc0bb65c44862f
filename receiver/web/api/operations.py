"""`/v1` for what people do to a job after the fact: its timeline, a download retry, the reconciliation report.

The same answers as `fluxhook events`, `fluxhook retry` and `fluxhook report` on the database, so those
commands work through FLUXHOOK_API_URL too (receiver/cli/remote_ops.py). Scopes as everywhere in /v1
(receiver/config/keys.py): a `submit` key reads and retries only the jobs it created (another key's job is
404) and its report counts only them; a `read` key retries nothing (403). Deliveries to the operator's sinks
are in a timeline only for keys that operate (`admin`, `read`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.engine.report import report as build_report
from receiver.engine.retry import NotRetryable, reopen_download
from receiver.engine.runtime import Runtime
from receiver.engine.timeline import timeline as build_timeline
from receiver.store import iso
from receiver.web.api.auth import authenticate, visible, writer
from receiver.web.api.errors import ApiError, api_endpoint, invalid, not_found
from receiver.web.api.jobs import job_id_of, view

__all__ = ["parse_since", "report", "retry", "timeline"]


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@api_endpoint
async def timeline(request: Request) -> Response:
    rt = _rt(request)
    key = authenticate(request)
    job = visible(key, await rt.store.get_job(job_id_of(request)))
    rows = await build_timeline(rt, job, deliveries=key.operates)
    shown: list[dict[str, Any]] = [{**row, "at": iso(row["at"])} for row in rows]
    return JSONResponse({"job": await view(rt, job), "timeline": shown})


@api_endpoint
async def retry(request: Request) -> Response:
    rt = _rt(request)
    key = writer(request)
    job_id = job_id_of(request)
    job = visible(key, await rt.store.get_job(job_id))
    try:
        await reopen_download(rt, job_id)  # a repeated retry (succeeded, downloading) changes nothing
    except KeyError:
        raise not_found("unknown job") from None
    except NotRetryable as exc:
        raise ApiError(409, "not_retryable", str(exc)) from None
    return JSONResponse(await view(rt, await rt.store.get_job(job_id) or job))


_SINCE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
                    r"(?:[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|([+-])([0-9]{2}):([0-9]{2})))?")
#: What `report`'s `since` can show (a time before year 1 or after 9999 in UTC is held at the edge).
_EARLIEST = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def _days(year: int, month: int) -> int:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 29 if month == 2 and leap else (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]


def parse_since(text: str | None) -> float | None:
    """`since` as epoch seconds: an RFC 3339 date-time (JSON Schema's `date-time`: 2026-01-31T12:00:00Z) or a
    date (`date`: 2026-01-31, midnight UTC), exactly what /openapi.json says (models.SINCE_SCHEMA); else 422."""
    if text is None:
        return None
    found = _SINCE.fullmatch(text)
    problem = invalid("since", "since must be an RFC 3339 time or a date, e.g. 2026-01-31T00:00:00Z or 2026-01-31")
    if found is None:
        raise problem
    year, month, day, hour, minute, second, fraction, zone, sign, zh, zm = found.groups()
    y, mo, d = int(year), int(month), int(day)
    h, mi, sec = int(hour or 0), int(minute or 0), int(second or 0)
    offset = 0 if zone in (None, "Z", "z") else (1 if sign == "+" else -1) * (int(zh) * 60 + int(zm))
    if not (1 <= mo <= 12 and 1 <= d <= _days(y, mo) and h <= 23 and mi <= 59 and sec <= 60
            and abs(offset) < 24 * 60):
        raise problem
    # A leap second only where the UTC time is 23:59 (as JSON Schema validators read RFC 3339).
    if sec == 60 and (h * 60 + mi - offset) % (24 * 60) != 23 * 60 + 59:
        raise problem
    at = _epoch_days(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset * 60 + float(fraction or 0)
    return min(max(at, _EARLIEST), _LATEST)


def _epoch_days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 in the proleptic Gregorian calendar, year 0 included (Python's dates start at 1)."""
    y = year - (month <= 2)
    era, yoe = divmod(y, 400)
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


@api_endpoint
async def report(request: Request) -> Response:
    rt = _rt(request)
    key = authenticate(request)
    since = parse_since(request.query_params.get("since"))
    return JSONResponse(await build_report(rt, since, created_by=key.owner_filter()))

"""The two body families providers speak, read into our vocabulary.

A :class:`Shape` builds the submit body and reads submit answers and job
snapshots (callback bodies and poll answers are the same object for every
provider here). BFL and its proxies share :data:`BFL`; Replicate and the
Replicate-compatible proxy paths share :data:`REPLICATE`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from submitter.status import Status

__all__ = [
    "BFL",
    "REPLICATE",
    "BodyError",
    "Observation",
    "Shape",
    "SubmitAnswer",
    "loads_object",
]


class BodyError(ValueError):
    """A provider body that cannot be understood: not JSON, no id, wrong types."""


@dataclass(frozen=True)
class SubmitAnswer:
    provider_job_id: str
    polling_url: str | None


@dataclass(frozen=True)
class Observation:
    """What one callback or poll says about a job, in our vocabulary."""

    provider_job_id: str | None
    #: None: nothing we act on (unknown status: keep waiting).
    status: Status | None
    raw_status: str
    #: Result URLs; acted on only when `status` is SUCCEEDED.
    urls: tuple[str, ...] = ()
    reason: str | None = None
    progress: float | None = None
    not_found: bool = False
    #: The end of the provider's log so far (Replicate).
    logs: str | None = None
    #: When the provider finished (epoch seconds), which starts the result URLs' lifetime.
    completed_at: float | None = None


@dataclass(frozen=True)
class Shape:
    name: str
    submit_body: Callable[[Mapping[str, Any], str, str, Sequence[str]], dict[str, Any]]
    submit_answer: Callable[[Mapping[str, Any]], SubmitAnswer]
    observe: Callable[[Mapping[str, Any]], Observation]


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object from raw UTF-8 bytes (RFC 8259 §8.1), or raise :class:`BodyError`.

    `json.loads` on bytes would also guess UTF-16 and UTF-32 and let lone surrogates
    through; here anything but valid UTF-8 is refused before parsing.
    """
    try:
        text = body.decode("utf-8")  # strict: refuses invalid bytes and encoded surrogates
    except UnicodeDecodeError:
        raise BodyError("body is not UTF-8 encoded JSON") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise BodyError("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BodyError("body is not a JSON object")
    # JSON may escape lone surrogates ("\ud800"), which no UTF-8 database column can hold; the
    # full check runs only for bodies that escape something in that range at all.
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BodyError("body holds an invalid Unicode escape") from None
    return data


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 §6): stored, they would make every later answer invalid.
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"{text} is out of range")
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # JSON integers can exceed any float
            return None
    return None


def _urls(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list):
        return tuple(u for u in value if isinstance(u, str) and u)
    return ()


# -- BFL, DeerAPI, CometAPI (README.md, "Provider facts we rely on") -------------------------

#: Case-insensitive status vocabulary of BFL and its proxies.
BFL_STATUSES: Mapping[str, Status] = {
    "ready": Status.SUCCEEDED,
    "success": Status.SUCCEEDED,
    "succeeded": Status.SUCCEEDED,
    "succeed": Status.SUCCEEDED,
    "pending": Status.RUNNING,
    "processing": Status.RUNNING,
    "queued": Status.RUNNING,
    "task-queued": Status.RUNNING,
    "task-processing": Status.RUNNING,
    "generating": Status.RUNNING,
    "reasoning": Status.RUNNING,
    "error": Status.FAILED,
    "failed": Status.FAILED,
    "failure": Status.FAILED,
    "request moderated": Status.MODERATED,
    "content moderated": Status.MODERATED,
    "generated content moderated": Status.MODERATED,
}
#: Statuses that say the provider does not know the task (yet, or any more).
BFL_NOT_FOUND = frozenset({"task not found"})


def _bfl_submit_body(
    params: Mapping[str, Any], webhook_url: str, webhook_secret: str, events: Sequence[str]
) -> dict[str, Any]:
    return {**params, "webhook_url": webhook_url, "webhook_secret": webhook_secret}


def _bfl_submit_answer(data: Mapping[str, Any]) -> SubmitAnswer:
    """Both BFL answers: `{id, polling_url}` and webhook mode's `{id, status, webhook_url}`."""
    job_id = _text(data.get("id")) or _text(data.get("task_id"))
    if job_id is None:
        raise BodyError("submit answer has no id")
    polling_url = data.get("polling_url")
    return SubmitAnswer(job_id, polling_url if isinstance(polling_url, str) and polling_url else None)


def _bfl_reason(data: Mapping[str, Any]) -> str | None:
    details = data.get("details")
    parts: list[str] = []
    if isinstance(details, dict):
        reasons = details.get("Moderation Reasons")
        if isinstance(reasons, list):
            parts.extend(str(r) for r in reasons if isinstance(r, (str, int, float)))
    for source in (data, details if isinstance(details, dict) else {}):
        for key in ("error", "message", "detail"):
            value = source.get(key)
            if isinstance(value, str) and value and value not in parts:
                parts.append(value)
    return "; ".join(parts)[:500] or None


def _bfl_samples(result: Any) -> tuple[str, ...]:
    if isinstance(result, dict):
        for key in ("sample", "samples", "url", "urls"):
            found = _bfl_samples(result.get(key))
            if found:
                return found
        return ()
    return _urls(result)


def _bfl_observe(data: Mapping[str, Any]) -> Observation:
    """`id` or `task_id`, any casing of the status, the sample URL(s), moderation reasons."""
    job_id = _text(data.get("id")) or _text(data.get("task_id"))
    raw = data.get("status")
    if not isinstance(raw, str):
        raise BodyError("body has no status string")
    key = " ".join(raw.strip().lower().replace("_", " ").split())
    progress = _number(data.get("progress"))
    if key in BFL_NOT_FOUND:
        return Observation(job_id, None, raw, reason="provider reports task not found", not_found=True)
    status = BFL_STATUSES.get(key)
    if status == Status.SUCCEEDED:
        urls = _bfl_samples(data.get("result"))
        if not urls:
            return Observation(job_id, Status.FAILED, raw, reason="provider reported success without a result URL")
        return Observation(job_id, status, raw, urls=urls, progress=progress)
    if status in (Status.FAILED, Status.MODERATED):
        return Observation(job_id, status, raw, reason=_bfl_reason(data) or raw)
    return Observation(job_id, status, raw, progress=progress)


BFL = Shape("bfl", _bfl_submit_body, _bfl_submit_answer, _bfl_observe)


# -- Replicate and Replicate-compatible proxies (README.md, "Provider facts we rely on") -------

#: `aborted` is terminal too (a deadline hit before start); official clients forget it.
REPLICATE_STATUSES: Mapping[str, Status] = {
    "starting": Status.SUBMITTED,
    "processing": Status.RUNNING,
    "succeeded": Status.SUCCEEDED,
    "failed": Status.FAILED,
    "canceled": Status.CANCELED,
    "aborted": Status.CANCELED,
}
LOGS_TAIL = 2000


def _replicate_submit_body(
    params: Mapping[str, Any], webhook_url: str, webhook_secret: str, events: Sequence[str]
) -> dict[str, Any]:
    # Replicate signs with the account's secret; the per-job secret has no field here.
    return {"input": dict(params), "webhook": webhook_url, "webhook_events_filter": list(events)}


def _replicate_submit_answer(data: Mapping[str, Any]) -> SubmitAnswer:
    job_id = _text(data.get("id"))
    if job_id is None:
        raise BodyError("prediction has no id")
    # `urls.get` points at api.replicate.com even through proxies: polls are built from the id.
    return SubmitAnswer(job_id, None)


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _replicate_observe(data: Mapping[str, Any]) -> Observation:
    """A prediction snapshot: `status` decides; a non-null `output` alone does not mean done."""
    job_id = _text(data.get("id"))
    raw = data.get("status")
    if not isinstance(raw, str):
        raise BodyError("prediction has no status string")
    status = REPLICATE_STATUSES.get(raw.strip().lower())
    logs = data.get("logs")
    tail = logs[-LOGS_TAIL:] if isinstance(logs, str) and logs else None
    urls = _urls(data.get("output"))
    completed = _timestamp(data.get("completed_at"))
    error = data.get("error")
    reason = str(error)[:500] if error else None
    if status == Status.SUCCEEDED and not urls:
        if data.get("data_removed") is True:
            return Observation(job_id, Status.EXPIRED, raw, logs=tail,
                               reason="the provider removed the output before it was downloaded")
        return Observation(job_id, Status.FAILED, raw, logs=tail, reason="prediction succeeded without output")
    if raw.strip().lower() == "aborted":
        reason = reason or "aborted: the prediction was stopped before it started"
    elif status in (Status.FAILED, Status.CANCELED):
        reason = reason or raw
    return Observation(job_id, status, raw, urls=urls, reason=reason, logs=tail, completed_at=completed)


REPLICATE = Shape("replicate", _replicate_submit_body, _replicate_submit_answer, _replicate_observe)

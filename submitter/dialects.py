"""Each provider's protocol as data: auth, paths, status vocabulary, body shapes.

Adding a BFL-shaped provider means adding a :class:`Dialect` value to
:data:`DIALECTS`; nothing else in the code branches on a provider's name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .status import Status

__all__ = [
    "DIALECTS",
    "BodyError",
    "Dialect",
    "Observation",
    "SubmitAnswer",
    "parse_observation",
    "parse_submit_answer",
]

#: Case-insensitive status vocabulary of BFL and its proxies (bfl.md §2, §3.2).
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
NOT_FOUND = frozenset({"task not found"})

#: Where BFL serves results (bfl.md §4): regional hosts change, so suffixes.
BFL_DELIVERY_HOSTS = ("*.bfl.ai", "*.blob.core.windows.net")


class BodyError(ValueError):
    """A provider body that cannot be understood: not JSON, no id, wrong types."""


@dataclass(frozen=True)
class Dialect:
    """How to talk to one provider."""

    name: str
    base_url: str
    key_env: str
    url_env: str
    #: "x-key" sends the key raw in `x-key`; "bearer" sends `Authorization: Bearer`.
    auth: str
    submit_path: str  # formatted with model=
    poll_path: str  # formatted with id=
    #: Poll the `polling_url` the provider returned (BFL's regional routing),
    #: provided its host is one of `polling_hosts`; proxies echo BFL's raw URL,
    #: which their key cannot use, so they poll `poll_path` instead.
    use_polling_url: bool
    polling_hosts: tuple[str, ...] = ()
    statuses: Mapping[str, Status] = field(default_factory=lambda: BFL_STATUSES)
    download_hosts: tuple[str, ...] = BFL_DELIVERY_HOSTS
    #: Result URLs without a readable expiry are assumed to live this long.
    url_lifetime: float = 600.0
    #: Active jobs the provider allows per account, and per model where lower.
    concurrency: int = 24
    model_concurrency: Mapping[str, int] = field(default_factory=dict)

    def auth_headers(self, key: str) -> dict[str, str]:
        if self.auth == "x-key":
            return {"x-key": key}
        return {"authorization": f"Bearer {key}"}

    def submit_url(self, base: str, model: str) -> str:
        return base.rstrip("/") + self.submit_path.format(model=quote(model, safe=""))

    def poll_url(self, base: str, provider_job_id: str) -> str:
        return base.rstrip("/") + self.poll_path.format(id=quote(provider_job_id, safe=""))

    def cap_for(self, model: str) -> int:
        return self.model_concurrency.get(model, self.concurrency)

    def submit_body(self, params: Mapping[str, Any], webhook_url: str, webhook_secret: str) -> dict[str, Any]:
        return {**params, "webhook_url": webhook_url, "webhook_secret": webhook_secret}


_BFL_PROXY = {
    "auth": "bearer",
    "submit_path": "/flux/v1/{model}",
    "poll_path": "/flux/v1/get_result?id={id}",
    "use_polling_url": False,
}

DIALECTS: Mapping[str, Dialect] = {
    d.name: d
    for d in (
        Dialect(
            name="bfl",
            base_url="https://api.bfl.ai",
            key_env="BFL_API_KEY",
            url_env="FLUXHOOK_BFL_URL",
            auth="x-key",
            submit_path="/v1/{model}",
            poll_path="/v1/get_result?id={id}",
            use_polling_url=True,
            polling_hosts=("*.bfl.ai",),
            model_concurrency={"flux-kontext-max": 6},
        ),
        Dialect(
            name="deerapi",
            base_url="https://api.deerapi.com",
            key_env="DEERAPI_KEY",
            url_env="FLUXHOOK_DEERAPI_URL",
            **_BFL_PROXY,
        ),
        Dialect(
            name="cometapi",
            base_url="https://api.cometapi.com",
            key_env="COMETAPI_KEY",
            url_env="FLUXHOOK_COMETAPI_URL",
            **_BFL_PROXY,
        ),
    )
}


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
    urls: tuple[str, ...] = ()
    reason: str | None = None
    progress: float | None = None
    not_found: bool = False


def loads_object(body: bytes) -> dict[str, Any]:
    """Parse a JSON object from raw bytes, or raise :class:`BodyError`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BodyError("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BodyError("body is not a JSON object")
    return data


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def parse_submit_answer(data: Mapping[str, Any]) -> SubmitAnswer:
    """Both BFL answers: `{id, polling_url}` and webhook mode's `{id, status, webhook_url}`."""
    job_id = _text(data.get("id")) or _text(data.get("task_id"))
    if job_id is None:
        raise BodyError("submit answer has no id")
    polling_url = data.get("polling_url")
    return SubmitAnswer(job_id, polling_url if isinstance(polling_url, str) and polling_url else None)


def _reason(data: Mapping[str, Any]) -> str | None:
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


def _sample_urls(result: Any) -> tuple[str, ...]:
    if isinstance(result, str):
        return (result,)
    if isinstance(result, dict):
        for key in ("sample", "samples", "url", "urls"):
            found = _sample_urls(result.get(key))
            if found:
                return found
    if isinstance(result, list):
        return tuple(u for u in result if isinstance(u, str) and u)
    return ()


def parse_observation(dialect: Dialect, data: Mapping[str, Any]) -> Observation:
    """Read a callback or get_result body (bfl.md §2, §3.2): `id` or `task_id`,
    any casing of the status, the sample URL(s), moderation reasons."""
    job_id = _text(data.get("id")) or _text(data.get("task_id"))
    raw = data.get("status")
    if not isinstance(raw, str):
        raise BodyError("body has no status string")
    key = " ".join(raw.strip().lower().replace("_", " ").split())
    progress = data.get("progress")
    progress_value = float(progress) if isinstance(progress, (int, float)) and not isinstance(progress, bool) else None
    if key in NOT_FOUND:
        return Observation(job_id, None, raw, reason="provider reports task not found", not_found=True)
    status = dialect.statuses.get(key)
    if status == Status.SUCCEEDED:
        urls = _sample_urls(data.get("result"))
        if not urls:
            return Observation(job_id, Status.FAILED, raw, reason="provider reported success without a result URL")
        return Observation(job_id, status, raw, urls=urls, progress=progress_value)
    if status in (Status.FAILED, Status.MODERATED):
        return Observation(job_id, status, raw, reason=_reason(data) or raw)
    return Observation(job_id, status, raw, progress=progress_value)

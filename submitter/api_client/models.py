"""What the /v1 API answers, as frozen dataclasses: a job, its files, an outbox event, a page of jobs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from submitter.api_client.errors import bad_response
from submitter.status import TERMINAL

__all__ = ["ApiEvent", "JobFile", "JobPage", "JobView", "loads"]


def loads(text: str | bytes, what: str, status: int | None = None) -> Any:
    """JSON, or an ApiError saying the answer was `what`."""
    try:
        return json.loads(text)
    except ValueError:
        raise bad_response(what, status) from None


@dataclass(frozen=True)
class JobFile:
    n: int
    size: int | None
    sha256: str | None
    content_type: str | None
    location: str | None
    url: str | None

    @classmethod
    def from_json(cls, data: Any) -> JobFile:
        if not isinstance(data, dict) or not isinstance(data.get("n"), int):
            raise bad_response("a file without an integer `n`")
        return cls(data["n"], data.get("size"), data.get("sha256"), data.get("content_type"),
                   data.get("location"), data.get("url"))


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it (the same JSON in answers and in event `data`)."""

    id: str
    provider: str
    model: str
    status: str
    error: str | None = None
    note: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    provider_job_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    submitted_at: str | None = None
    files: tuple[JobFile, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> JobView:
        """Unknown keys are ignored, so a newer server does not break an older client."""
        if not isinstance(data, dict):
            raise bad_response("a job that is not an object")
        for key in ("id", "status"):
            if not isinstance(data.get(key), str):
                raise bad_response(f"a job without a string `{key}`")
        files = data.get("files") or []
        if not isinstance(files, list):
            raise bad_response("a job whose `files` is not a list")
        metadata = data.get("metadata") or {}
        return cls(
            id=data["id"], provider=str(data.get("provider", "")), model=str(data.get("model", "")),
            status=data["status"], error=data.get("error"), note=data.get("note"),
            metadata=metadata if isinstance(metadata, dict) else {}, provider_job_id=data.get("provider_job_id"),
            created_at=data.get("created_at"), updated_at=data.get("updated_at"),
            submitted_at=data.get("submitted_at"), files=tuple(JobFile.from_json(f) for f in files),
        )

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change (:data:`submitter.status.TERMINAL`)."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class ApiEvent:
    """One outbox event: `seq` orders them and resumes a stream; `data` is the job at that moment."""

    seq: int
    id: str
    type: str
    created_at: str | None
    data: JobView

    @classmethod
    def from_json(cls, data: Any) -> ApiEvent:
        if not isinstance(data, dict) or not isinstance(data.get("seq"), int) or not isinstance(data.get("type"), str):
            raise bad_response("an event without an integer `seq` and a string `type`")
        return cls(data["seq"], str(data.get("id", "")), data["type"], data.get("created_at"),
                   JobView.from_json(data.get("data")))


#: One page of `list`: the jobs and the cursor of the next page (None: that was the last).
JobPage = tuple[list[JobView], str | None]

"""The /v1 request and response shapes, as pydantic v2 models.

One source for both: requests are validated with these models, and `/openapi.json` takes its
component schemas from the same models (pydantic emits JSON Schema 2020-12, the dialect of
OpenAPI 3.1), so what is documented is what is checked. Pydantic is chosen over hand-written
JSON Schema + `jsonschema` because its errors carry the field's location, which the API's
`field` needs, and its strict mode refuses the type coercions ("1" for 1) a schema would refuse.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.config.integrations import EVENT_TYPES
from receiver.web.api.errors import ApiError, invalid
from submitter.status import Status

__all__ = [
    "ANY_MODEL_PATTERN", "CURSOR_PATTERN", "EVENT_TYPES_PATTERN", "JOB_ID_PATTERN", "MODEL_PATTERNS", "SINCE_SCHEMA",
    "CreateJob", "ErrorBody", "EventData", "EventEnvelope", "EventFile", "FileView", "JobList", "JobView",
    "LegacyError", "Report", "ReportRow", "SweepReport", "Timeline", "TimelineRow", "validation_error",
]

EventType = Literal[
    "job.submitted", "job.running", "job.stored", "job.failed", "job.moderated", "job.expired", "job.canceled",
]


#: What the API checks, published as JSON Schema (ECMA 262 patterns, anchored) in `/openapi.json` and used by the
#: handlers, so a request matching the document is accepted and one that does not is refused (422).
#: A model name (submitter.dialects.Dialect.check_model: tests/receiver/web/test_api_rules.py keeps them equal):
#: one segment, or owner/name for Replicate-style providers, no `..` anywhere.
_SEGMENT = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
MODEL_PATTERNS = {False: f"^(?!.*\\.\\.){_SEGMENT}$", True: f"^(?!.*\\.\\.){_SEGMENT}/{_SEGMENT}$"}
ANY_MODEL_PATTERN = f"^(?!.*\\.\\.){_SEGMENT}(/{_SEGMENT})?$"
JOB_ID_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
#: A page cursor: the last job's creation time (epoch seconds, as Python writes a float) and id. Any text of this
#: form is a valid place to start a page from.
CURSOR_PATTERN = "^-?[0-9]{1,17}(\\.[0-9]{1,17})?(e[-+][0-9]{2})?~[A-Za-z0-9_-]{1,128}$"
#: `?since=` of the report: an RFC 3339 date-time, or a date (midnight UTC).
SINCE_SCHEMA: dict[str, Any] = {"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"}]}
#: `?types=` of the event stream: comma-separated event types, no spaces.
_TYPE = "(" + "|".join(t.replace(".", "\\.") for t in EVENT_TYPES) + ")"
EVENT_TYPES_PATTERN = f"^{_TYPE}(,{_TYPE})*$"


class CreateJob(BaseModel):
    """The body of `POST /v1/jobs`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    provider: str = Field(description="A configured provider, e.g. bfl or replicate.")
    model: str = Field(description="The provider's model name, e.g. flux-dev (owner/name for Replicate).")
    params: dict[str, Any] = Field(description="The model's input, sent to the provider as is.")
    events: list[str] | None = Field(
        default=None, description="Replicate's webhook event filter; must include `completed`.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Yours, kept with the job and shown in every view (at most 16 KiB as JSON).")


class FileView(BaseModel):
    n: int
    size: int
    sha256: str
    content_type: str
    location: str
    url: str


class JobView(BaseModel):
    """A job as every API answer and every event shows it."""

    id: str
    provider: str
    model: str
    status: Status
    error: str | None
    note: str | None
    metadata: dict[str, Any]
    provider_job_id: str | None
    created_by: str | None = Field(description="The name of the API key that created the job (FLUXHOOK_API_KEYS);"
                                               " null for jobs made with the CLI.")
    created_at: str
    updated_at: str | None
    submitted_at: str | None
    files: list[FileView]


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = Field(default=None, description="The request field at fault, where there is one.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class EventFile(FileView):
    """A stored file in an event: in a sink's delivery also a link that needs no API key (README, Integrations)."""

    link: str | None = Field(default=None, description="Sinks only: the file without credentials until"
                                                       " `link_expires_at` (FLUXHOOK_EVENT_LINK_TTL), signed per"
                                                       " attempt; null when none can be made.")
    link_expires_at: str | None = Field(default=None, description="Sinks only: when `link` stops working.")


class EventData(JobView):
    """The job as of the event, with its prompt."""

    prompt: str | None = Field(description="The job's `params.prompt`, cut to 2,000 characters.")
    prompt_truncated: bool = Field(description="True when `prompt` was cut.")
    files: list[EventFile]  # type: ignore[assignment]  # a narrower field: pydantic validates it as such


class EventEnvelope(BaseModel):
    """The `data:` line of one server-sent event (the same envelope every sink sends)."""

    id: str
    seq: int
    type: EventType
    created_at: str
    data: EventData = Field(description="The job as of the event.")


class TimelineRow(BaseModel):
    at: str = Field(description="When, ISO 8601 UTC.")
    kind: Literal["created", "submitted", "callback", "event", "delivery"]
    detail: str = Field(description="created: provider and model; submitted: the provider's task; callback: its"
                                    " verdict and the status it said; event: its type; delivery: the sink, its state,"
                                    " attempts and last answer.")
    id: int | str | None = Field(default=None, description="A callback's audit id (what `fluxhook replay` takes), or"
                                                           " the outbox event's id (evt_...) of an event or delivery.")


class Timeline(BaseModel):
    """`GET /v1/jobs/{id}/timeline`: the job now, and everything known about it in time order."""

    job: JobView
    timeline: list[TimelineRow] = Field(description="Deliveries to sinks only for `admin` and `read` keys.")


class ReportRow(BaseModel):
    """One provider's counts (README, "fluxhook report"), or the `total` row."""

    provider: str
    jobs: int
    submitted: int
    stored: int
    failed_by_provider: int
    moderated: int
    failed_download: int
    expired_before_download: int
    expired: int
    canceled: int
    in_progress: int
    paid_not_delivered: int = Field(description="A result reported, the job ended failed/expired with files not"
                                                " stored: candidates for a retry.")
    delivered_twice: int
    rescued_by_poll: int
    callbacks_kept: int


class Report(BaseModel):
    """`GET /v1/report`: reconciliation per provider, then a `total` row."""

    since: str | None
    providers: list[ReportRow]
    orphan_callbacks: None = Field(description="Always null: callbacks for unknown jobs are not recorded.")
    orphan_callbacks_note: str


class LegacyError(BaseModel):
    """The error shape of `/v1/sweep` (it predates the /v1 API)."""

    error: str


class SweepReport(BaseModel):
    model_config = ConfigDict(extra="allow")


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem of a body, as 422 `invalid` naming its dotted field (values are never echoed)."""
    first = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"])[:100] or "body"
    if first["type"] == "extra_forbidden":
        return invalid(field, f"unknown field {field!r}")
    if first["type"] == "missing":
        return invalid(field, f"{field} is required")
    return invalid(field, f"{field}: {first['msg']}")

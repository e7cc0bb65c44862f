"""What listings read of the ledger: a job's summary (never its params) and per-provider figures the
database computes, so a page of jobs or the provider panel costs memory by what it shows, not by what
the jobs carry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from receiver.store.models import FileRecord, public_view
from submitter.status import Status

__all__ = ["PROMPT_CHARS", "JobSummary", "ProviderHour", "ProviderStats", "shorten"]

#: The most characters of a prompt a summary carries (the database cuts it).
PROMPT_CHARS = 200


def shorten(prompt: str | None) -> str | None:
    """A prompt of up to PROMPT_CHARS characters as is; a longer one cut to PROMPT_CHARS with an ellipsis.
    The database hands over one character more than it keeps, so a cut prompt is told from an exact one."""
    if not prompt:
        return None
    return prompt if len(prompt) <= PROMPT_CHARS else prompt[:PROMPT_CHARS - 1] + "…"


@dataclass(frozen=True)
class JobSummary:
    """A job as listings show it: its public fields, and its prompt shortened (:func:`shorten`)."""

    id: str
    provider: str
    model: str
    status: Status
    created_at: float
    updated_at: float | None = None
    submitted_at: float | None = None
    provider_job_id: str | None = None
    error: str | None = None
    note: str | None = None
    progress: float | None = None
    polls: int = 0
    callback_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_by: str | None = None
    prompt: str | None = None

    def view(self, files: list[FileRecord] | None = None, locate: Callable[[str], str] | None = None) -> dict[str, Any]:
        """Exactly what :meth:`Job.view <receiver.store.models.Job.view>` shows of the same job."""
        return public_view(self, files, locate)


@dataclass(frozen=True)
class ProviderStats:
    """One provider's jobs created since `since` (the provider panel's window), computed by the database."""

    provider: str
    since: float
    #: Jobs by status.
    statuses: dict[str, int]
    #: Jobs a verified callback reached.
    callbacks: int
    #: Jobs no callback reached whose polling found something (polls > 0).
    rescued: int
    #: Nearest-rank percentiles (by q, 0..100) of seconds from created, and from submitted, to stored.
    from_created: dict[int, float]
    from_submitted: dict[int, float]

    @property
    def jobs(self) -> int:
        return sum(self.statuses.values())


@dataclass(frozen=True)
class ProviderHour:
    """One provider's jobs created in one hour (`hour` is the hour's start), computed by the database."""

    provider: str
    hour: float
    jobs: int
    #: Jobs a verified callback reached, and jobs no callback reached whose polling found something.
    callbacks: int
    rescued: int
    #: Jobs that ended failed, moderated or expired.
    failures: int
    #: Nearest-rank percentiles (by q, 1..100) of seconds from created to stored, of the hour's stored jobs.
    to_artifact: dict[int, float]

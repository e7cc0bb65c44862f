"""Listings: jobs' summaries (the columns a listing shows, the prompt cut by the database; never the
params) and the provider panel's figures, aggregated by the database."""

from __future__ import annotations

import json
from typing import Any

from receiver.store.sql.jobs import listing_filter
from receiver.store.sql.plumbing import Op, Query
from receiver.store.sql.rows import status_list
from receiver.store.summary import PROMPT_CHARS, JobSummary, ProviderStats, shorten
from submitter.status import Status

__all__ = ["SUMMARY_COLUMNS", "get_summary", "job_summaries", "provider_stats", "row_to_summary"]

#: What a summary reads of a row: the prompt's first PROMPT_CHARS + 1 characters (one more tells a cut one).
SUMMARY_COLUMNS = (
    "id, provider, model, status, created_at, updated_at, submitted_at, provider_job_id, error, note, progress,"
    f" polls, callback_at, metadata, created_by, substr({{json_text:params:prompt}}, 1, {PROMPT_CHARS + 1}) AS prompt"
)

_STORED = status_list(frozenset({Status.STORED}))


def row_to_summary(row: Any) -> JobSummary:
    return JobSummary(
        id=row["id"], provider=row["provider"], model=row["model"], status=Status(row["status"]),
        created_at=row["created_at"], updated_at=row["updated_at"], submitted_at=row["submitted_at"],
        provider_job_id=row["provider_job_id"], error=row["error"], note=row["note"], progress=row["progress"],
        polls=row["polls"], callback_at=row["callback_at"], metadata=json.loads(row["metadata"]),
        created_by=row["created_by"], prompt=shorten(row["prompt"]),
    )


def job_summaries(
    status: Status | None, limit: int, provider: str | None = None, before: tuple[float, str] | None = None,
    created_by: str | None = None,
) -> Op[list[JobSummary]]:
    """As :func:`~receiver.store.sql.jobs.list_jobs` (the same filters and order), summaries only."""
    clause, args = listing_filter(status, provider, before, created_by)
    rows = yield Query(f"SELECT {SUMMARY_COLUMNS} FROM jobs{clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                       (*args, limit), "all")
    return [row_to_summary(r) for r in rows]


def get_summary(job_id: str) -> Op[JobSummary | None]:
    row = yield Query(f"SELECT {SUMMARY_COLUMNS} FROM jobs WHERE id = ?", (job_id,), "one")
    return row_to_summary(row) if row is not None else None


def _recent(mine: bool) -> str:
    """The newest `limit` jobs created since the earliest window's start (with `mine`, of one API key):
    what every window counts from."""
    return ("WITH recent AS (SELECT provider, status, created_at, submitted_at, updated_at, callback_at, polls"
            f" FROM jobs WHERE created_at >= ?{' AND created_by = ?' if mine else ''}"
            " ORDER BY created_at DESC, id DESC LIMIT ?) ")


_KINDS = (("created", "created_at"), ("submitted", "submitted_at"))


def _counts(windows: int, mine: bool) -> str:
    """Per provider and status, for each window: jobs, callbacks, jobs rescued by polling (one scan)."""
    per_window = ("SUM(CASE WHEN created_at >= ? THEN 1 ELSE 0 END),"
                  " SUM(CASE WHEN created_at >= ? AND callback_at IS NOT NULL THEN 1 ELSE 0 END),"
                  " SUM(CASE WHEN created_at >= ? AND callback_at IS NULL AND polls > 0 THEN 1 ELSE 0 END)")
    sums = ", ".join([per_window] * windows)
    return _recent(mine) + f"SELECT provider, status, {sums} FROM recent GROUP BY provider, status"


def _ranked(window: int, kind: str, start: str) -> str:
    """Stored jobs' seconds from `start` to stored, each with its rank per provider and the provider's count."""
    return (f"SELECT {window} AS w, provider, '{kind}' AS kind, updated_at - {start} AS d,"
            f" ROW_NUMBER() OVER (PARTITION BY provider ORDER BY updated_at - {start}) AS rn,"
            " COUNT(*) OVER (PARTITION BY provider) AS n"
            f" FROM recent WHERE created_at >= ? AND status = {_STORED} AND updated_at IS NOT NULL"
            f" AND {start} IS NOT NULL")


def _percentiles(windows: int, quantiles: tuple[int, ...], mine: bool) -> str:
    """The nearest-rank percentiles, rank ceil(q / 100 * n) in integers (q an integer percentage), of every
    window and kind in one statement (the recent jobs are read once)."""
    ranks = " OR ".join(f"rn = ({int(q)} * n + 99) / 100" for q in quantiles)
    branches = " UNION ALL ".join(_ranked(w, kind, start) for w in range(windows) for kind, start in _KINDS)
    return _recent(mine) + f"SELECT w, provider, kind, d, rn, n FROM ({branches}) AS ranked WHERE {ranks}"


def provider_stats(
    since: tuple[float, ...], limit: int, quantiles: tuple[int, ...], created_by: str | None = None,
) -> Op[list[ProviderStats]]:
    """Per provider with jobs, for each window start in `since`: its jobs by status, callbacks, jobs rescued
    by polling, and the `quantiles` of seconds to stored; over the newest `limit` jobs created since the
    earliest start (with `created_by`, only that API key's jobs)."""
    if not all(0 < q <= 100 for q in quantiles):
        raise ValueError(f"percentiles are from 1 to 100: {quantiles}")
    if not since:
        return []
    one_key = created_by is not None
    head = (min(since), *((created_by,) if one_key else ()), limit)
    counted = yield Query(_counts(len(since), one_key), (*head, *(s for s in since for _ in range(3))), "all")
    ranked = yield Query(_percentiles(len(since), quantiles, one_key),
                         (*head, *(s for s in since for _ in _KINDS)), "all")
    windows: list[dict[str, dict[str, Any]]] = [{} for _ in since]
    for provider, status, *sums in counted:
        for w, providers in enumerate(windows):
            n, callbacks, rescued = (int(v or 0) for v in sums[3 * w:3 * w + 3])
            if n:
                mine = providers.setdefault(provider, {"statuses": {}, "callbacks": 0, "rescued": 0,
                                                       "from_created": {}, "from_submitted": {}})
                mine["statuses"][status] = n
                mine["callbacks"] += callbacks
                mine["rescued"] += rescued
    for w, provider, kind, d, rn, n in ranked:
        taken = windows[int(w)][provider][f"from_{kind}"]
        for q in quantiles:
            if int(rn) == (int(q) * int(n) + 99) // 100:
                taken[q] = float(d)
    return [ProviderStats(provider=name, since=start, **values)
            for start, providers in zip(since, windows, strict=True) for name, values in sorted(providers.items())]

"""The provider panel's charts: per provider and hour, jobs created, callbacks, jobs rescued by polling,
failures and percentiles of seconds to stored, bucketed and aggregated by the database."""

from __future__ import annotations

from receiver.store.sql.plumbing import Op, Query
from receiver.store.sql.rows import status_list
from receiver.store.summary import ProviderHour
from submitter.status import Status

__all__ = ["HOUR", "provider_hourly"]

HOUR = 3600.0
_STORED = status_list(frozenset({Status.STORED}))
_FAILURES = status_list(frozenset({Status.FAILED, Status.MODERATED, Status.EXPIRED}))


def _recent(hours: int, mine: bool) -> str:
    """The newest `limit` jobs created since `since` (with `mine`, of one API key), each with its hour's
    index `h` (0 the first): a CASE on the hours' starts, which reads the same on every backend."""
    buckets = " ".join(f"WHEN created_at >= ? THEN {h}" for h in range(hours - 1, 0, -1))
    return (f"WITH recent AS (SELECT provider, status, created_at, updated_at, callback_at, polls,"
            f" CASE {buckets} ELSE 0 END AS h" if hours > 1 else
            "WITH recent AS (SELECT provider, status, created_at, updated_at, callback_at, polls, 0 AS h") + (
        f" FROM jobs WHERE created_at >= ?{' AND created_by = ?' if mine else ''}"
        " ORDER BY created_at DESC, id DESC LIMIT ?) ")


def _counts(hours: int, mine: bool) -> str:
    return _recent(hours, mine) + (
        "SELECT provider, h, COUNT(*),"
        " SUM(CASE WHEN callback_at IS NOT NULL THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN callback_at IS NULL AND polls > 0 THEN 1 ELSE 0 END),"
        f" SUM(CASE WHEN status IN ({_FAILURES}) THEN 1 ELSE 0 END)"
        " FROM recent GROUP BY provider, h")


def _percentiles(hours: int, quantiles: tuple[int, ...], mine: bool) -> str:
    """Nearest-rank percentiles (rank ceil(q / 100 * n), in integers) of every provider's hour, one statement."""
    ranks = " OR ".join(f"rn = ({int(q)} * n + 99) / 100" for q in quantiles)
    return _recent(hours, mine) + (
        "SELECT provider, h, d, rn, n FROM (SELECT provider, h, updated_at - created_at AS d,"
        " ROW_NUMBER() OVER (PARTITION BY provider, h ORDER BY updated_at - created_at) AS rn,"
        " COUNT(*) OVER (PARTITION BY provider, h) AS n"
        f" FROM recent WHERE status = {_STORED} AND updated_at IS NOT NULL) AS ranked WHERE {ranks}")


def provider_hourly(
    since: float, hours: int, limit: int, quantiles: tuple[int, ...], created_by: str | None = None,
) -> Op[list[ProviderHour]]:
    """Per provider and hour with jobs, of the `hours` hours from `since`: jobs created, callbacks, jobs
    rescued by polling, failures and the `quantiles` of seconds from created to stored; over the newest
    `limit` jobs created since `since` (with `created_by`, only that API key's jobs). A job created after
    the last hour's end counts in the last hour."""
    if not all(0 < q <= 100 for q in quantiles):
        raise ValueError(f"percentiles are from 1 to 100: {quantiles}")
    if hours < 1:
        return []
    starts = tuple(since + h * HOUR for h in range(hours - 1, 0, -1))
    args = (*starts, since, *((created_by,) if created_by is not None else ()), limit)
    counted = yield Query(_counts(hours, created_by is not None), args, "all")
    ranked = yield Query(_percentiles(hours, quantiles, created_by is not None), args, "all")
    taken: dict[tuple[str, int], dict[int, float]] = {}
    for provider, h, d, rn, n in ranked:
        for q in quantiles:
            if int(rn) == (int(q) * int(n) + 99) // 100:
                taken.setdefault((provider, int(h)), {})[q] = float(d)
    return sorted((ProviderHour(provider=provider, hour=since + int(h) * HOUR, jobs=int(jobs),
                                callbacks=int(callbacks or 0), rescued=int(rescued or 0), failures=int(failed or 0),
                                to_artifact=taken.get((provider, int(h)), {}))
                   for provider, h, jobs, callbacks, rescued, failed in counted),
                  key=lambda p: (p.provider, p.hour))

"""The provider panel at `/ui/providers`: per provider with jobs, charts of the last day by hour (jobs,
callbacks arrived vs rescued by poll, p50/p95 time to artifact, failures; Store.provider_hourly, drawn by
receiver/web/ui/charts.py) and a table of the last hour and day (Store.provider_stats), all computed by
the database; a `submit` key's panel counts only the jobs it created."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response

from receiver.store import ProviderStats
from receiver.web.ui.charts import HEIGHT, HOURS, WIDTH, charts_of, day_start
from receiver.web.ui.pages import caller, page, render, runtime
from submitter.status import Status

__all__ = ["PANEL_JOBS", "percentile", "providers_panel", "seconds"]

FAILURES = frozenset({Status.FAILED, Status.MODERATED, Status.EXPIRED})
WINDOWS = (("last hour", 3600.0), ("last day", 86400.0))
#: The most jobs the provider panel aggregates, the newest (the page says so when it reaches them).
PANEL_JOBS = 10_000
QUANTILES = (50, 95)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None for none. The definition the database's
    computation of the panel's percentiles follows (receiver/store/sql/listing.py)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"


@page
async def providers_panel(request: Request) -> Response:
    rt = runtime(request)
    now = rt.clock()
    starts = {label: now - window for label, window in WINDOWS}
    # Aggregated by the database: the page reads a few rows per provider, never the jobs themselves.
    stats = {(s.provider, s.since): s for s in await rt.store.provider_stats(
        tuple(starts.values()), limit=PANEL_JOBS, quantiles=QUANTILES, created_by=caller(request).owner_filter())}
    longest = min(starts.values())
    start = day_start(now)
    hourly = await rt.store.provider_hourly(start, hours=HOURS, limit=PANEL_JOBS, quantiles=QUANTILES,
                                            created_by=caller(request).owner_filter())
    rows = []
    for name in sorted({provider for provider, _ in stats}):  # providers with no jobs in the day: not shown
        for label, since in starts.items():
            mine = stats.get((name, since))
            if mine is None:
                mine = ProviderStats(name, since, {}, 0, 0, {}, {})
            rows.append({
                "provider": name, "window": label, "jobs": mine.jobs, "callbacks": mine.callbacks,
                "rescued": mine.rescued, "stored": mine.statuses.get(Status.STORED, 0),
                "failures": sum(n for status, n in mine.statuses.items() if status in FAILURES),
                "p50_created": seconds(mine.from_created.get(50)),
                "p95_created": seconds(mine.from_created.get(95)),
                "p50_submitted": seconds(mine.from_submitted.get(50)),
                "p95_submitted": seconds(mine.from_submitted.get(95)),
            })
    counted = sum(s.jobs for (_, since), s in stats.items() if since == longest)
    return render(request, "providers.html", {"title": "Providers", "rows": rows, "now": now,
                                              "capped": counted >= PANEL_JOBS, "start": start,
                                              "charts": charts_of(hourly, start), "width": WIDTH,
                                              "height": HEIGHT})

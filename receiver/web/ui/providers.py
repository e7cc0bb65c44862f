"""The provider panel at `/ui/providers`: per provider, over the last hour and day, jobs, callbacks,
jobs rescued by polling, failures, and p50/p95 times to stored."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response

from receiver.web.ui.pages import page, render, runtime
from submitter.status import Status

__all__ = ["PANEL_JOBS", "percentile", "providers_panel", "seconds"]

FAILURES = frozenset({Status.FAILED, Status.MODERATED, Status.EXPIRED})
WINDOWS = (("last hour", 3600.0), ("last day", 86400.0))
#: The most jobs the provider panel aggregates (the page says so when it reaches them).
PANEL_JOBS = 10_000


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None for none."""
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
    longest = max(w for _, w in WINDOWS)
    jobs = await rt.store.jobs_since(now - longest, limit=PANEL_JOBS)
    rows = []
    for name in sorted(set(rt.settings.providers) | {j.provider for j in jobs}):
        for label, window in WINDOWS:
            mine = [j for j in jobs if j.provider == name and j.created_at >= now - window]
            stored = [j for j in mine if j.status == Status.STORED and j.updated_at is not None]
            from_created = [j.updated_at - j.created_at for j in stored if j.updated_at is not None]
            from_submitted = [j.updated_at - j.submitted_at for j in stored
                              if j.updated_at is not None and j.submitted_at is not None]
            rows.append({
                "provider": name, "window": label, "jobs": len(mine),
                "callbacks": sum(1 for j in mine if j.callback_at is not None),
                "rescued": sum(1 for j in mine if j.callback_at is None and j.polls > 0),
                "stored": len(stored), "failures": sum(1 for j in mine if j.status in FAILURES),
                "p50_created": seconds(percentile(from_created, 50)),
                "p95_created": seconds(percentile(from_created, 95)),
                "p50_submitted": seconds(percentile(from_submitted, 50)),
                "p95_submitted": seconds(percentile(from_submitted, 95)),
            })
    return render(request, "providers.html", {"title": "Providers", "rows": rows, "now": now,
                                              "capped": len(jobs) >= PANEL_JOBS})

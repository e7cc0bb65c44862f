"""The provider panel's pictures: per provider, the last day by hour (Store.provider_hourly), drawn as
shapes the template writes as inline SVG (no script, no inline style: the page's CSP holds). Each shape
carries a title (a tooltip without script) and each chart a text description of its figures."""

from __future__ import annotations

import time
from dataclasses import dataclass

from receiver.store import ProviderHour

__all__ = ["HEIGHT", "HOURS", "WIDTH", "Chart", "Shape", "charts_of", "day_start"]

HOURS = 24
SLOT = 10  # viewBox units per hour
LEFT = 30  # room for the axis' top value
WIDTH = LEFT + HOURS * SLOT
PLOT = 60  # the plot's height
HEIGHT = PLOT + 14  # and the hours' labels under it


def day_start(now: float) -> float:
    """The start of the first of the HOURS clock hours (UTC) ending with the current one."""
    return (now // 3600 - (HOURS - 1)) * 3600


@dataclass(frozen=True)
class Shape:
    """A bar (`rect`) or a point (`circle`: x, y its centre), in viewBox units, with its CSS class."""

    kind: str
    css: str
    x: float
    y: float
    width: float = 0.0
    height: float = 0.0
    title: str = ""


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    desc: str
    top: str  # the y axis' top value, as shown
    shapes: tuple[Shape, ...]
    legend: tuple[tuple[str, str], ...]  # (CSS class, label)
    ticks: tuple[tuple[float, str], ...]  # (x, hour label)


def _hour(at: float) -> str:
    return time.strftime("%H:00", time.gmtime(at))


def _ceiling(value: float) -> float:
    """A round axis top at or above `value` (1, 2, 5 times a power of ten)."""
    step = 1.0
    while True:
        for m in (1, 2, 5):
            if value <= m * step:
                return m * step
        step *= 10


def _secs(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{value / 60:.1f} min"


def _bars(start: float, hours: dict[int, ProviderHour], series: tuple[tuple[str, str, str], ...],
          top: float) -> tuple[Shape, ...]:
    """Stacked bars per hour of `series` (attribute, CSS class, label), scaled to `top`."""
    shapes = []
    for h, row in sorted(hours.items()):
        base = 0
        for attr, css, label in series:
            value = getattr(row, attr)
            if value:
                height = value / top * PLOT
                shapes.append(Shape("rect", css, LEFT + h * SLOT + 1, PLOT - (base + height), SLOT - 2, height,
                                    f"{_hour(start + h * 3600)}: {value} {label}"))
                base += height
    return tuple(shapes)


def _count_chart(ident: str, title: str, start: float, hours: dict[int, ProviderHour],
                 series: tuple[tuple[str, str, str], ...], ticks: tuple[tuple[float, str], ...]) -> Chart:
    totals = {attr: sum(getattr(r, attr) for r in hours.values()) for attr, _, _ in series}
    top = _ceiling(max([1, *(sum(getattr(r, a) for a, _, _ in series) for r in hours.values())]))
    desc = "; ".join(f"{totals[attr]} {label} in the last {HOURS} hours" for attr, _, label in series)
    return Chart(ident, title, desc + ".", f"{top:g}", _bars(start, hours, series, top),
                 tuple((css, label) for _, css, label in series), ticks)


def _time_chart(ident: str, start: float, hours: dict[int, ProviderHour],
                ticks: tuple[tuple[float, str], ...]) -> Chart:
    points = [(h, q, v) for h, row in sorted(hours.items()) for q, v in sorted(row.to_artifact.items())]
    top = _ceiling(max([1.0, *(v for _, _, v in points)]))
    shapes = tuple(Shape("circle", f"p{q}", LEFT + h * SLOT + SLOT / 2, PLOT - v / top * PLOT,
                         title=f"{_hour(start + h * 3600)}: p{q} {_secs(v)}") for h, q, v in points)
    slowest = max((v for _, q, v in points if q == 95), default=None)
    desc = (f"Slowest hourly p95 {_secs(slowest)}." if slowest is not None
            else f"No job was stored in the last {HOURS} hours.")
    return Chart(ident, "Time to artifact (p50, p95)", desc, _secs(top), shapes,
                 (("p50", "p50"), ("p95", "p95")), ticks)


def charts_of(rows: list[ProviderHour], start: float) -> dict[str, tuple[Chart, ...]]:
    """Each provider with jobs since `start`, and its four charts: jobs, callbacks arrived vs rescued by
    poll, p50/p95 seconds from created to stored, failures."""
    by_provider: dict[str, dict[int, ProviderHour]] = {}
    for row in rows:
        by_provider.setdefault(row.provider, {})[int((row.hour - start) // 3600)] = row
    ticks = tuple((LEFT + h * SLOT, _hour(start + h * 3600)) for h in range(0, HOURS, 6))
    out: dict[str, tuple[Chart, ...]] = {}
    for provider, hours in sorted(by_provider.items()):
        ident = f"chart-{len(out)}"
        out[provider] = (
            _count_chart(f"{ident}-jobs", "Jobs created", start, hours, (("jobs", "bar-jobs", "jobs"),), ticks),
            _count_chart(f"{ident}-callbacks", "Callbacks arrived vs rescued by poll", start, hours,
                         (("callbacks", "bar-callbacks", "callbacks arrived"),
                          ("rescued", "bar-rescued", "rescued by poll")), ticks),
            _time_chart(f"{ident}-time", start, hours, ticks),
            _count_chart(f"{ident}-failures", "Failures", start, hours,
                         (("failures", "bar-failures", "failures"),), ticks),
        )
    return out

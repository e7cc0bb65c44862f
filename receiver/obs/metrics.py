"""Prometheus metrics: one :class:`Metrics` per Runtime (so tests may build many apps), no global registry.

Counters and histograms are updated where things happen (callbacks, polls, downloads, deliveries);
the ledger's view (jobs by status, outbox lag) is read from the store at scrape time by
:meth:`Metrics.render`, so every worker of a host reports the same, current numbers.

Several workers on one host (gunicorn, `uvicorn --workers`): set PROMETHEUS_MULTIPROC_DIR, prometheus_client's
own variable, to an empty folder shared by them, wiped before start, in the environment the processes start
with (prometheus_client reads it when it is imported). Each process then writes its samples there and any
worker's scrape sums them (prometheus_client.multiprocess). Nothing here changes the environment or
prometheus_client's state.

prometheus_client itself (tens of milliseconds to import) is imported where metrics are first made or
rendered, not with this module: a runtime imports this module, and a process that has answered only
callbacks and /healthz so far never pays for it (tests/test_cold_imports.py).

Ready for alerting: every known label combination (the providers and sinks given, each verdict, outcome,
reason and status) exists at zero from the start, so `rate()`, `increase()` and absence alerts see the first
event; the `_created` series prometheus_client adds to counters and histograms are left out of this
registry's exposition (:class:`_WithoutCreated`), not switched off process-wide; `fluxhook_build_info`
names the version.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from receiver.config.env import SettingsError
from submitter.status import Status

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["CONTENT_TYPE", "LABELS", "Ledger", "Metrics", "MetricsSetupError", "multiprocess_dir"]


class MetricsSetupError(SettingsError):
    """The Prometheus multi-process settings cannot work (the message names the variable and the fix): a
    settings error, so `fluxhook` prints it and exits 2 like any other."""


class _SinkPosition(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def after_seq(self) -> int: ...


class Ledger(Protocol):
    """What a scrape reads from the store (receiver.store's Store provides it)."""

    async def counts(self) -> Mapping[str, int]: ...

    async def last_seq(self) -> int: ...

    async def sinks(self) -> Sequence[_SinkPosition]: ...

#: The Prometheus text exposition format (0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
_DOWNLOAD = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Seconds between a file being stored and its URL expiring: small is a near miss.
_MARGIN = (0.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0)


#: Provider-reported ends without files, as `fluxhook_artifacts_lost_total` reasons.
_ENDED = {"failed": "provider_failure", "moderated": "moderated"}

#: Every value each fixed label takes (README's metrics table): all exist at zero from the start.
LABELS: Mapping[str, tuple[str, ...]] = {
    "verdict": ("accepted", "duplicate", "rejected", "bad_body", "refused", "unknown_job", "conflict"),
    "poll": ("answered", "failed"),
    "rescued": ("succeeded", "failed", "moderated"),
    "download": ("stored", "transient", "expired", "rejected"),
    "lost": ("expired", "rejected", "provider_failure", "moderated", "deadline"),
    "delivery": ("delivered", "retrying", "dead"),
    "status": tuple(str(s) for s in Status),
}


def multiprocess_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, checked: an existing, writable folder, or None when unset.

    The spelling PROMETHEUS_MULTIPROCESS_DIR, which fluxhook once accepted, is refused with the fix: it
    worked only by rewriting the environment and prometheus_client's value class at run time."""
    env = os.environ if environ is None else environ
    path = env.get("PROMETHEUS_MULTIPROC_DIR") or None
    if path is None and env.get("PROMETHEUS_MULTIPROCESS_DIR"):
        raise MetricsSetupError(
            "PROMETHEUS_MULTIPROCESS_DIR is set but prometheus_client reads PROMETHEUS_MULTIPROC_DIR: "
            "rename the variable (same value)")
    if path is not None and not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        raise MetricsSetupError(
            f"PROMETHEUS_MULTIPROC_DIR={path} is not a writable folder: create it (empty, shared by the "
            "workers of this host, wiped before they start) or unset the variable")
    return path


class _Ledger:
    """Scrape-time gauges from numbers read just before (the store is async, collectors are not); a
    prometheus_client collector (its Collector is a protocol: any object with `collect`)."""

    def __init__(self, counts: Mapping[str, int], last_seq: int | None, lag: Mapping[str, int], up: int,
                 build: tuple[str, str]) -> None:
        self.counts, self.last_seq, self.lag, self.up, self.build = counts, last_seq, lag, up, build

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # loaded by Metrics already: a lookup

        info = GaugeMetricFamily("fluxhook_build_info", "Always 1: the fluxhook version and Python serving",
                                 labels=["version", "python"])
        info.add_metric(list(self.build), 1)
        yield info
        jobs = GaugeMetricFamily("fluxhook_jobs", "Jobs in the ledger by status", labels=["status"])
        for status, n in sorted(self.counts.items()):
            jobs.add_metric([status], n)
        yield jobs
        if self.last_seq is not None:
            yield GaugeMetricFamily("fluxhook_outbox_last_seq", "Newest outbox event sequence number",
                                    value=self.last_seq)
        lag = GaugeMetricFamily("fluxhook_outbox_lag_events",
                                "Outbox events not yet fanned out to each sink (newest seq minus its position)",
                                labels=["sink"])
        for sink, n in sorted(self.lag.items()):
            lag.add_metric([sink], n)
        yield lag
        yield GaugeMetricFamily("fluxhook_store_up", "1 if the store answered this scrape", value=self.up)


class _WithoutCreated:
    """`registry`'s families without their `<name>_created` samples (a collector: generate_latest takes any).

    prometheus_client's only switch for them, disable_created_metrics(), is process-wide state; this leaves
    other registries in the process as they are. (Multi-process collections hold none to begin with.)"""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import Metric  # loaded by Metrics already: a lookup

        for family in self.registry.collect():
            created = family.name + "_created"
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if s.name != created]
            yield kept


def _version() -> str:
    from importlib import metadata  # slow to import (cold start): only where metrics are made

    try:
        return metadata.version("fluxhook")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The process's metrics. `registry` is this instance's own (never the global default)."""

    #: What :meth:`render` returns.
    content_type = CONTENT_TYPE

    def __init__(self, *, multiprocess: str | None = None, providers: Iterable[str] = (),
                 sinks: Iterable[str] = ()) -> None:
        #: The folder every worker's samples are summed from at a scrape (None: this process only).
        self.multiprocess = multiprocess if multiprocess is not None else multiprocess_dir()
        from prometheus_client import CollectorRegistry, Counter, Histogram  # see the module's docstring

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.callbacks = Counter("fluxhook_callbacks", "Provider callbacks received, by verdict",
                                 ["provider", "verdict"], registry=r)
        self.callback_ack = Histogram("fluxhook_callback_ack_seconds",
                                      "Time from receiving a callback to answering it", ["provider"],
                                      buckets=_LATENCY, registry=r)
        self.polls = Counter("fluxhook_polls", "Status polls sent to providers, by outcome",
                             ["provider", "outcome"], registry=r)
        self.poll_rescues = Counter("fluxhook_poll_rescues",
                                    "Jobs whose result (or failure) was learned by a poll, not a callback",
                                    ["provider", "status"], registry=r)
        self.submit_to_stored = Histogram("fluxhook_submit_to_stored_seconds",
                                          "Time from submit to all of a job's files stored", ["provider"],
                                          buckets=_JOB, registry=r)
        self.downloads = Counter("fluxhook_downloads", "Result file downloads, by outcome",
                                 ["provider", "outcome"], registry=r)
        self.download_bytes = Counter("fluxhook_download_bytes", "Bytes of result files stored",
                                      ["provider"], registry=r)
        self.download_seconds = Histogram("fluxhook_download_seconds", "Time one result file download took",
                                          ["provider", "outcome"], buckets=_DOWNLOAD, registry=r)
        self.url_margin = Histogram("fluxhook_url_margin_seconds",
                                    "Time left before a result URL expired when its file was stored",
                                    ["provider"], buckets=_MARGIN, registry=r)
        self.artifacts_lost = Counter("fluxhook_artifacts_lost",
                                      "Jobs that ended without their files, by reason",
                                      ["provider", "reason"], registry=r)
        self.deliveries = Counter("fluxhook_deliveries", "Outbox delivery attempts to sinks, by outcome",
                                  ["sink", "outcome"], registry=r)
        self.rejected_logs_suppressed = Counter("fluxhook_log_lines_suppressed",
                                                "Log lines about refused callbacks left out (rate limit)",
                                                registry=r)

        #: The callback path's labelled children, looked up once (labels() takes a lock and builds a key).
        self._callback_children: dict[tuple[str, str], Any] = {}
        self._ack_children: dict[str, Any] = {}
        self._zero(sorted(set(providers)), sorted(set(sinks)))
        #: `fluxhook_build_info`'s labels.
        self.build = (_version(), platform.python_version())

    def _zero(self, providers: Sequence[str], sinks: Sequence[str]) -> None:
        """Every known label combination, made now at zero (a child starts at 0; in multi-process mode it
        is written to this process's file at once)."""
        per_provider: list[tuple[Any, tuple[str, ...]]] = [
            (self.callbacks, LABELS["verdict"]), (self.polls, LABELS["poll"]), (self.poll_rescues, LABELS["rescued"]),
            (self.downloads, LABELS["download"]), (self.download_seconds, LABELS["download"]),
            (self.artifacts_lost, LABELS["lost"]),
        ]
        for provider in providers:
            for metric in (self.callback_ack, self.submit_to_stored, self.download_bytes, self.url_margin):
                metric.labels(provider)
            for metric, values in per_provider:
                for value in values:
                    metric.labels(provider, value)
        for sink in sinks:
            for outcome in LABELS["delivery"]:
                self.deliveries.labels(sink, outcome)

    # -- hooks (one line at each call site) ------------------------------------------------

    def callback(self, provider: str, verdict: str) -> None:
        child = self._callback_children.get((provider, verdict))
        if child is None:  # providers and verdicts are a few fixed names: bounded
            child = self._callback_children[(provider, verdict)] = self.callbacks.labels(provider, verdict)
        child.inc()

    def acked(self, provider: str, seconds: float) -> None:
        """A callback answered `seconds` after it arrived."""
        child = self._ack_children.get(provider)
        if child is None:
            child = self._ack_children[provider] = self.callback_ack.labels(provider)
        child.observe(seconds)

    def lost(self, provider: str, reason: str) -> None:
        self.artifacts_lost.labels(provider, reason).inc()

    def ended(self, provider: str, status: object) -> None:
        """A job the provider ended without results (its report moved the job there)."""
        reason = _ENDED.get(str(status))
        if reason is not None:
            self.lost(provider, reason)

    def downloaded(self, provider: str, outcome: str, seconds: float, size: int) -> None:
        self.downloads.labels(provider, outcome).inc()
        self.download_seconds.labels(provider, outcome).observe(seconds)
        if size:
            self.download_bytes.labels(provider).inc(size)

    def delivery(self, sink: str, outcome: str) -> None:
        self.deliveries.labels(sink, outcome).inc()

    # -- scraping ---------------------------------------------------------------------------

    async def render(self, store: Ledger | None) -> bytes:
        """The exposition text: this process's (or, multi-process, every process's) samples and the
        ledger's gauges read now. A store that does not answer leaves those gauges out
        (`fluxhook_store_up 0`) rather than failing the scrape."""
        counts: dict[str, int] = {}
        last: int | None = None
        lag: dict[str, int] = {}
        up = 1
        if store is not None:
            try:
                counts = dict(await store.counts())
                last = await store.last_seq()
                for sink in await store.sinks():
                    lag[sink.name] = max(0, last - sink.after_seq)
                counts = {status: counts.get(status, 0) for status in LABELS["status"]} | counts
            except Exception:
                up, counts, last, lag = 0, {}, None, {}
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess  # loaded by __init__

        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry(auto_describe=True)
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess)
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Ledger(counts, last, lag, up, self.build))
        return generate_latest(_WithoutCreated(registry)) + generate_latest(scrape)

"""Typed settings, read once from the environment and validated at start-up."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from receiver.config.integrations import Integrations
from submitter.dialects import DIALECTS
from submitter.provider import Provider
from submitter.urls import masked_url

__all__ = ["Settings", "SettingsError"]


class SettingsError(Exception):
    """A bad environment variable; the message names it."""


@dataclass(frozen=True)
class Settings:
    public_url: str | None = None
    allow_http: bool = False
    #: A SQLite path, or a postgresql:// (postgres://) URL for the PostgreSQL backend.
    db: str = field(default="./fluxhook.db", repr=False)
    #: PostgreSQL connections per process.
    db_pool: int = 10
    results: Path = Path("./results")
    #: `s3://bucket[/prefix]` when FLUXHOOK_RESULTS names an object store (then `results` is unused).
    results_url: str | None = None
    secret_key: bytes | None = field(default=None, repr=False)
    providers: Mapping[str, Provider] = field(default_factory=dict)
    #: None: each provider's own delivery hosts.
    download_hosts: tuple[str, ...] | None = None
    download_allow_private: bool = False
    max_download_bytes: int = 50 * 1024 * 1024
    download_concurrency: int = 8
    download_timeout: float = 300.0
    max_body: int = 256 * 1024
    poll_after: float = 60.0
    poll_min_interval: float = 5.0
    poll_max_interval: float = 60.0
    job_deadline: float = 1800.0
    sweep_interval: float = 5.0
    lease_seconds: float = 120.0
    #: How long a callback body may take to arrive (slow-body attacks).
    body_timeout: float = 10.0
    #: Accepted callbacks are kept this long for audit and replay, then pruned by the sweep.
    event_retention: float = 7 * 86400.0
    #: On SIGTERM: how long in-flight downloads and sweeps may take to finish before they are handed back.
    drain_timeout: float = 20.0
    #: Crash-test hooks: named points where the process kills itself (see Runtime.failpoint).
    failpoints: frozenset[str] = frozenset()
    #: Overrides of each provider's cap on active jobs.
    max_active: Mapping[str, int] = field(default_factory=dict)
    #: Replicate's signing secrets (several during a rotation); empty: fetch from the API.
    replicate_webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Standard Webhooks timestamp tolerance, both directions.
    webhook_tolerance: float = 300.0
    # -- the HTTP server's own limits (receiver/serve/server.py) --
    #: Request line plus headers, in bytes: 431 beyond it.
    max_header_bytes: int = 16 * 1024
    #: Seconds a client may take to send a complete request line and headers.
    header_timeout: float = 10.0
    #: Open connections at most; beyond it a new connection gets 503 and is closed.
    max_connections: int = 512
    #: Seconds an idle keep-alive connection stays open.
    idle_timeout: float = 5.0
    # -- downloads and caps --
    #: Allow plain http result URLs (tests and the simulator only).
    download_allow_http: bool = False
    #: Result files accepted per job; a provider answer listing more is refused.
    max_outputs: int = 16
    #: Audit events kept per job; beyond it callbacks are still applied but not recorded.
    max_events_per_job: int = 100
    #: Seconds after the job deadline by which a succeeded job's files must be stored, else it ends `expired`.
    download_window: float = 3600.0
    # -- serverless and proxies --
    #: Bearer key for `POST /v1/sweep`; None: that endpoint does not exist (404).
    sweep_token: str | None = field(default=None, repr=False)
    #: Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or CIDR networks); none by default.
    forwarded_allow_ips: tuple[str, ...] = ()
    #: S3-compatible endpoint for `s3://` results (R2, MinIO, ...); None: AWS.
    s3_endpoint: str | None = None
    #: The /v1 API, the event outbox and its sinks (webhooks out, Redis Streams, NATS).
    integrations: Integrations = Integrations()
    # -- observability --
    #: `text` (default) or `json`: one JSON object per log line (FLUXHOOK_LOG_FORMAT).
    log_format: str = "text"
    #: Bearer token for GET /metrics (besides the API keys); None and no API keys: /metrics is open.
    metrics_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never show the key, nor a database password
        return f"Settings(public_url={self.public_url!r}, db={self.db_display!r}, results={str(self.results)!r})"

    @property
    def db_display(self) -> str:
        """FLUXHOOK_DB as it may be shown: a URL's password masked."""
        return masked_url(self.db)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        allow_http = _bool(env, "FLUXHOOK_ALLOW_HTTP", False)
        public_url = env.get("FLUXHOOK_PUBLIC_URL") or None
        if public_url is not None:
            public_url = _check_public_url(public_url, allow_http)
        secret = env.get("FLUXHOOK_SECRET_KEY") or None
        if secret is not None and "change-me" in secret.lower():
            raise SettingsError(
                "FLUXHOOK_SECRET_KEY is still the placeholder from the example file; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if secret is not None and len(secret) < 32:
            raise SettingsError(
                "FLUXHOOK_SECRET_KEY must be at least 32 characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        providers = {}
        max_active = {}
        for name, dialect in DIALECTS.items():
            base = env.get(dialect.url_env) or dialect.base_url
            if urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).hostname:
                raise SettingsError(f"{dialect.url_env} must be an http(s) URL, got {base!r}")
            providers[name] = Provider(dialect, base.rstrip("/"), env.get(dialect.key_env) or None)
            cap_var = f"FLUXHOOK_{name.upper().replace('-', '_')}_MAX_ACTIVE"
            if cap_var in env:
                max_active[name] = _number(env, cap_var, 0, int)
        hosts = env.get("FLUXHOOK_DOWNLOAD_HOSTS")
        secrets = tuple(x.strip() for x in (env.get("REPLICATE_WEBHOOK_SECRET") or "").split(",") if x.strip())
        for position, value in enumerate(secrets, 1):
            if not _standard_secret_ok(value):
                raise SettingsError(
                    f"REPLICATE_WEBHOOK_SECRET: secret #{position} is not a whsec_<base64> signing secret"
                )
        return cls(
            public_url=public_url,
            allow_http=allow_http,
            db=env.get("FLUXHOOK_DB") or "./fluxhook.db",
            db_pool=_count(env, "FLUXHOOK_DB_POOL", 10),
            results=_results_folder(env.get("FLUXHOOK_RESULTS")),
            results_url=_results_url(env.get("FLUXHOOK_RESULTS")),
            secret_key=secret.encode() if secret else None,
            providers=providers,
            download_hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()) if hosts else None,
            download_allow_private=_bool(env, "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE", False),
            max_download_bytes=_number(env, "FLUXHOOK_MAX_DOWNLOAD_BYTES", 50 * 1024 * 1024, int),
            download_concurrency=_number(env, "FLUXHOOK_DOWNLOAD_CONCURRENCY", 8, int),
            download_timeout=_number(env, "FLUXHOOK_DOWNLOAD_TIMEOUT", 300.0),
            max_body=_number(env, "FLUXHOOK_MAX_BODY", 256 * 1024, int),
            poll_after=_number(env, "FLUXHOOK_POLL_AFTER", 60.0),
            poll_max_interval=_number(env, "FLUXHOOK_POLL_MAX_INTERVAL", 60.0),
            job_deadline=_number(env, "FLUXHOOK_JOB_DEADLINE", 1800.0),
            sweep_interval=_number(env, "FLUXHOOK_SWEEP_INTERVAL", 5.0),
            lease_seconds=_positive(env, "FLUXHOOK_LEASE_SECONDS", 120.0),
            body_timeout=_positive(env, "FLUXHOOK_BODY_TIMEOUT", 10.0),
            event_retention=_positive(env, "FLUXHOOK_EVENT_RETENTION", 7 * 86400.0),
            drain_timeout=_number(env, "FLUXHOOK_DRAIN_TIMEOUT", 20.0),
            failpoints=_failpoints(env.get("FLUXHOOK_FAILPOINTS", "")),
            max_active=max_active,
            replicate_webhook_secrets=secrets,
            max_header_bytes=_count(env, "FLUXHOOK_MAX_HEADER_BYTES", 16 * 1024),
            header_timeout=_positive(env, "FLUXHOOK_HEADER_TIMEOUT", 10.0),
            max_connections=_count(env, "FLUXHOOK_MAX_CONNECTIONS", 512),
            idle_timeout=_positive(env, "FLUXHOOK_IDLE_TIMEOUT", 5.0),
            download_allow_http=_bool(env, "FLUXHOOK_DOWNLOAD_ALLOW_HTTP", False),
            max_outputs=_count(env, "FLUXHOOK_MAX_OUTPUTS", 16),
            max_events_per_job=_count(env, "FLUXHOOK_MAX_EVENTS_PER_JOB", 100),
            download_window=_positive(env, "FLUXHOOK_DOWNLOAD_WINDOW", 3600.0),
            sweep_token=_sweep_token(env.get("FLUXHOOK_SWEEP_TOKEN") or None),
            forwarded_allow_ips=_networks(env.get("FLUXHOOK_FORWARDED_ALLOW_IPS", "")),
            s3_endpoint=_endpoint(env.get("FLUXHOOK_S3_ENDPOINT") or None),
            integrations=Integrations.from_env(env, _number, SettingsError),
            log_format=_log_format(env.get("FLUXHOOK_LOG_FORMAT") or "text"),
            metrics_token=_metrics_token(env.get("FLUXHOOK_METRICS_TOKEN") or None),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def require_public(self) -> tuple[str, bytes]:
        """The callback base URL and the master key, or a SettingsError naming what is missing."""
        if not self.secret_key:
            raise SettingsError("FLUXHOOK_SECRET_KEY is not set: it derives every job's webhook secret")
        if not self.public_url:
            raise SettingsError("FLUXHOOK_PUBLIC_URL is not set: providers need a URL to call back")
        return self.public_url, self.secret_key

    def provider(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise SettingsError(f"unknown provider {name!r}; known: {', '.join(sorted(self.providers))}") from None

    def cap_for(self, provider: str, model: str) -> int:
        """Active jobs allowed: the account's cap (FLUXHOOK_*_MAX_ACTIVE, or the provider's
        documented one), and never more than a model's own lower cap."""
        dialect = self.provider(provider).dialect
        account = self.max_active.get(provider, dialect.concurrency)
        return min(account, dialect.model_concurrency.get(model, account))

    def download_hosts_for(self, provider: str) -> tuple[str, ...]:
        if self.download_hosts is not None:
            return self.download_hosts
        return self.provider(provider).dialect.download_hosts


def _check_public_url(url: str, allow_http: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"FLUXHOOK_PUBLIC_URL must be an absolute URL, got {url!r}")
    if parts.scheme == "http" and not allow_http:
        raise SettingsError("FLUXHOOK_PUBLIC_URL must use https (set FLUXHOOK_ALLOW_HTTP=1 for local testing)")
    if parts.query or parts.fragment:
        raise SettingsError("FLUXHOOK_PUBLIC_URL must not have a query or fragment")
    return url.rstrip("/")


def _standard_secret_ok(value: str) -> bool:
    raw = value.removeprefix("whsec_")
    try:
        return len(base64.b64decode(raw, validate=True)) >= 16
    except (binascii.Error, ValueError):
        return False


FAILPOINTS = frozenset({
    "after-ledger", "before-submit-recorded", "after-callback-commit", "mid-download", "mid-sweep",
})


def _failpoints(value: str) -> frozenset[str]:
    points = frozenset(p.strip() for p in value.split(",") if p.strip())
    if points - FAILPOINTS:
        raise SettingsError(
            f"FLUXHOOK_FAILPOINTS: unknown point(s) {', '.join(sorted(points - FAILPOINTS))};"
            f" known: {', '.join(sorted(FAILPOINTS))}"
        )
    return points


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = float(_number(env, name, default))
    if value <= 0:
        raise SettingsError(f"{name} must be greater than 0")
    return value


def _sweep_token(value: str | None) -> str | None:
    if value is not None and len(value) < 32:
        raise SettingsError("FLUXHOOK_SWEEP_TOKEN must be at least 32 characters")
    return value


def _log_format(value: str) -> str:
    if value.strip().lower() not in ("text", "json"):
        raise SettingsError(f"FLUXHOOK_LOG_FORMAT must be text or json, got {value!r}")
    return value.strip().lower()


def _metrics_token(value: str | None) -> str | None:
    if value is not None and len(value) < 16:
        raise SettingsError("FLUXHOOK_METRICS_TOKEN must be at least 16 characters")
    return value


def _networks(value: str) -> tuple[str, ...]:
    import ipaddress

    found = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(
                f"FLUXHOOK_FORWARDED_ALLOW_IPS: {item!r} is not an IP address or network"
            ) from None
        found.append(item)
    return tuple(found)


def _results_url(value: str | None) -> str | None:
    """FLUXHOOK_RESULTS as an object-store URL (`s3://bucket[/prefix]`), or None for a local folder."""
    if not value or "://" not in value:
        return None
    parts = urlsplit(value)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise SettingsError(f"FLUXHOOK_RESULTS must be a folder or s3://bucket[/prefix], got {value!r}")
    return f"s3://{parts.netloc}{parts.path.rstrip('/')}"


def _results_folder(value: str | None) -> Path:
    return Path("./results") if not value or _results_url(value) else Path(value)


def _endpoint(value: str | None) -> str | None:
    if value is not None and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
        raise SettingsError(f"FLUXHOOK_S3_ENDPOINT must be an http(s) URL, got {value!r}")
    return value.rstrip("/") if value else None


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    value = int(_number(env, name, default, int))
    if value < 1:
        raise SettingsError(f"{name} must be at least 1")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/0/true/false, got {value!r}")


def _number(env: Mapping[str, str], name: str, default: float, kind: type = float):  # type: ignore[no-untyped-def]
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        number = kind(value)
    except ValueError:
        raise SettingsError(f"{name} must be a {'whole ' if kind is int else ''}number, got {value!r}") from None
    if number < 0:
        raise SettingsError(f"{name} must not be negative, got {value!r}")
    return number

"""Typed settings, read once from the environment and validated at start-up."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from receiver.config.capacity import Capacity, capacity, optional_count
from receiver.config.env import (
    SettingsError,
    boolean,
    check_public_url,
    count,
    endpoint,
    failpoints,
    log_format,
    metrics_token,
    networks,
    number,
    positive,
    results_folder,
    results_url,
    sweep_token,
    whole,
)
from receiver.config.integrations import Integrations
from receiver.config.paths import DB_NAME, RESULTS_NAME, data_dir, left_behind
from receiver.config.providers import master_key, replicate_secrets
from receiver.config.providers import providers as read_providers
from submitter.provider import Provider
from submitter.urls import masked_url

__all__ = ["Settings", "SettingsError"]


def _default_data_dir() -> Path:
    return data_dir(os.environ)


def _default_db() -> str:
    return str(_default_data_dir() / DB_NAME)


def _default_results() -> Path:
    return _default_data_dir() / RESULTS_NAME


@dataclass(frozen=True)
class Settings:
    public_url: str | None = None
    allow_http: bool = False
    #: The per-user data directory (XDG_DATA_HOME/fluxhook): where the ledger and results are by default.
    data_dir: Path = field(default_factory=_default_data_dir)
    #: A SQLite path, or a postgresql:// (postgres://) URL for the PostgreSQL backend.
    db: str = field(default_factory=_default_db, repr=False)
    #: Why the default ledger may not be opened (a ledger an older version left in the working directory).
    db_refusal: str | None = field(default=None, repr=False)
    #: PostgreSQL connections per process.
    db_pool: int = 10
    results: Path = field(default_factory=_default_results)
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
    #: Event streams and long-polls at once, in all and per API key; None: derived (see `capacity`).
    max_streams: int | None = None
    max_streams_per_key: int | None = None
    #: Connections only `/hooks/...` may use; None: derived (see `capacity`).
    hooks_reserved: int | None = None
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
    #: `fluxhook serve` may listen beyond loopback with /metrics unprotected (a proxy or network protects it).
    metrics_public: bool = False

    def __repr__(self) -> str:  # never show the key, nor a database password
        return f"Settings(public_url={self.public_url!r}, db={self.db_display!r}, results={str(self.results)!r})"

    @property
    def db_display(self) -> str:
        """FLUXHOOK_DB as it may be shown: a URL's password masked, a SQLite file's absolute path."""
        return masked_url(self.db) if "://" in self.db else os.path.abspath(self.db)

    @property
    def results_display(self) -> str:
        """FLUXHOOK_RESULTS as it may be shown: the s3:// URL, or the folder's absolute path."""
        return self.results_url or os.path.abspath(self.results)

    def db_to_open(self) -> str:
        """FLUXHOOK_DB, to open now: a SettingsError if a ledger an older version left in the working
        directory would be passed over for the new default (receiver/config/paths.py); the per-user
        data directory is made (mode 0700) when the ledger is the default one."""
        if self.db_refusal:
            raise SettingsError(self.db_refusal)
        if self.db == str(self.data_dir / DB_NAME):
            try:
                self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise SettingsError(
                    f"cannot create {self.data_dir} for the default FLUXHOOK_DB ({exc.strerror}): "
                    "set FLUXHOOK_DB and FLUXHOOK_RESULTS, or XDG_DATA_HOME"
                ) from None
        return self.db

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        allow_http = boolean(env, "FLUXHOOK_ALLOW_HTTP", False)
        public_url = env.get("FLUXHOOK_PUBLIC_URL") or None
        if public_url is not None:
            public_url = check_public_url(public_url, allow_http)
        secret = master_key(env)
        providers, max_active = read_providers(env)
        hosts = env.get("FLUXHOOK_DOWNLOAD_HOSTS")
        secrets = replicate_secrets(env)
        data = data_dir(env)  # the defaults of FLUXHOOK_DB and FLUXHOOK_RESULTS are there
        results = env.get("FLUXHOOK_RESULTS")
        settings = cls(
            public_url=public_url,
            allow_http=allow_http,
            data_dir=data,
            db=env.get("FLUXHOOK_DB") or str(data / DB_NAME),
            db_refusal=left_behind(env, data),
            db_pool=count(env, "FLUXHOOK_DB_POOL", 10),
            results=results_folder(results) if results else data / RESULTS_NAME,
            results_url=results_url(results),
            secret_key=secret.encode() if secret else None,
            providers=providers,
            download_hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()) if hosts else None,
            download_allow_private=boolean(env, "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE", False),
            max_download_bytes=whole(env, "FLUXHOOK_MAX_DOWNLOAD_BYTES", 50 * 1024 * 1024),
            download_concurrency=whole(env, "FLUXHOOK_DOWNLOAD_CONCURRENCY", 8),
            download_timeout=number(env, "FLUXHOOK_DOWNLOAD_TIMEOUT", 300.0),
            max_body=whole(env, "FLUXHOOK_MAX_BODY", 256 * 1024),
            poll_after=number(env, "FLUXHOOK_POLL_AFTER", 60.0),
            poll_max_interval=number(env, "FLUXHOOK_POLL_MAX_INTERVAL", 60.0),
            job_deadline=number(env, "FLUXHOOK_JOB_DEADLINE", 1800.0),
            sweep_interval=number(env, "FLUXHOOK_SWEEP_INTERVAL", 5.0),
            lease_seconds=positive(env, "FLUXHOOK_LEASE_SECONDS", 120.0),
            body_timeout=positive(env, "FLUXHOOK_BODY_TIMEOUT", 10.0),
            event_retention=positive(env, "FLUXHOOK_EVENT_RETENTION", 7 * 86400.0),
            drain_timeout=number(env, "FLUXHOOK_DRAIN_TIMEOUT", 20.0),
            failpoints=failpoints(env.get("FLUXHOOK_FAILPOINTS", "")),
            max_active=max_active,
            replicate_webhook_secrets=secrets,
            max_header_bytes=count(env, "FLUXHOOK_MAX_HEADER_BYTES", 16 * 1024),
            header_timeout=positive(env, "FLUXHOOK_HEADER_TIMEOUT", 10.0),
            max_connections=count(env, "FLUXHOOK_MAX_CONNECTIONS", 512),
            idle_timeout=positive(env, "FLUXHOOK_IDLE_TIMEOUT", 5.0),
            max_streams=optional_count(env, "FLUXHOOK_MAX_STREAMS"),
            max_streams_per_key=optional_count(env, "FLUXHOOK_MAX_STREAMS_PER_KEY"),
            hooks_reserved=optional_count(env, "FLUXHOOK_HOOKS_RESERVED"),
            download_allow_http=boolean(env, "FLUXHOOK_DOWNLOAD_ALLOW_HTTP", False),
            max_outputs=count(env, "FLUXHOOK_MAX_OUTPUTS", 16),
            max_events_per_job=count(env, "FLUXHOOK_MAX_EVENTS_PER_JOB", 100),
            download_window=positive(env, "FLUXHOOK_DOWNLOAD_WINDOW", 3600.0),
            sweep_token=sweep_token(env.get("FLUXHOOK_SWEEP_TOKEN") or None),
            forwarded_allow_ips=networks(env.get("FLUXHOOK_FORWARDED_ALLOW_IPS", "")),
            s3_endpoint=endpoint(env.get("FLUXHOOK_S3_ENDPOINT") or None),
            integrations=Integrations.from_env(env),
            log_format=log_format(env.get("FLUXHOOK_LOG_FORMAT") or "text"),
            metrics_token=metrics_token(env.get("FLUXHOOK_METRICS_TOKEN") or None),
            metrics_public=boolean(env, "FLUXHOOK_METRICS_PUBLIC", False),
        )
        _ = settings.capacity  # the stream caps and the hooks' reserve fit under the connection cap
        return settings

    @property
    def capacity(self) -> Capacity:
        """The stream caps and the connections reserved for callbacks (receiver/config/capacity.py)."""
        return capacity(self.max_connections, self.max_streams, self.max_streams_per_key, self.hooks_reserved)

    @property
    def metrics_protected(self) -> bool:
        """Whether GET /metrics asks for a bearer: FLUXHOOK_API_KEYS or FLUXHOOK_METRICS_TOKEN is set."""
        return bool(self.integrations.api_keys) or self.metrics_token is not None

    def with_overrides(self, **changes: object) -> Settings:
        if "db" in changes:
            changes.setdefault("db_refusal", None)  # a ledger named outright is no left-behind default
        # dataclasses.replace is typed field by field; these keywords are checked when it runs.
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

    def require_credentials(self, name: str) -> Provider:
        """The provider `name`, or a SettingsError naming the variable its API key comes from (the dialect's
        `key_env`) when that is unset: checked before a job is recorded, so the provider never sees it."""
        provider = self.provider(name)
        if not provider.api_key:
            variable = provider.dialect.key_env
            raise SettingsError(f"{variable} is not set: {name} jobs need the account's API key"
                                f" (export {variable}=...)")
        return provider

    def missing_credentials(self, names: Iterable[str]) -> dict[str, str]:
        """Of the providers `names` (repeats welcome), each unset API-key variable with require_credentials'
        message: one entry per variable, however many providers share it (DEERAPI_KEY)."""
        missing: dict[str, str] = {}
        for name in dict.fromkeys(names):
            try:
                self.require_credentials(name)
            except SettingsError as exc:
                missing.setdefault(self.provider(name).dialect.key_env, str(exc))
        return missing

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

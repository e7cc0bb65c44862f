"""Settings of the integration surfaces: the /v1 API, the event outbox and the sinks it feeds.

Read once from the environment with the rest of :class:`~receiver.config.settings.Settings`
(its `integrations` field); every bad value is a SettingsError naming its variable.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from receiver.config.env import SettingsError, positive
from receiver.config.keys import ApiKey, parse_api_keys

__all__ = ["EVENT_TYPES", "MAX_LINK_TTL", "TERMINAL_EVENTS", "Integrations"]

#: The longest FLUXHOOK_EVENT_LINK_TTL: SigV4 presigned URLs live at most 7 days.
MAX_LINK_TTL = 7 * 86400.0

#: Every outbox event type, one per status a job can reach that people wait for.
EVENT_TYPES: tuple[str, ...] = (
    "job.submitted", "job.running", "job.stored", "job.failed", "job.moderated", "job.expired", "job.canceled",
)
TERMINAL_EVENTS: frozenset[str] = frozenset(
    {"job.stored", "job.failed", "job.moderated", "job.expired", "job.canceled"}
)


@dataclass(frozen=True)
class Integrations:
    # -- the /v1 API --
    #: Keys accepted by /v1, /ui and /metrics, each with a name and a scope (FLUXHOOK_API_KEYS,
    #: receiver/config/keys.py); empty: the API and the UI answer 404.
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    #: How long an Idempotency-Key is remembered.
    idempotency_ttl: float = 86400.0
    #: Where the CLI finds a fluxhook API instead of the database (FLUXHOOK_API_URL / FLUXHOOK_API_KEY).
    api_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    #: Seconds between SSE heartbeat comments on /v1/events.
    sse_heartbeat: float = 15.0
    #: Longest `?wait=` a long-poll may ask for.
    max_wait: float = 60.0
    # -- the outbox --
    #: Events are kept (for SSE resumption and redelivery) this long, then pruned by the sweep.
    outbox_retention: float = 7 * 86400.0
    # -- webhooks out --
    forward_urls: tuple[str, ...] = field(default=(), repr=False)
    forward_secret: str | None = field(default=None, repr=False)
    forward_events: frozenset[str] = TERMINAL_EVENTS
    #: A delivery is retried for this long after its event, then it is dead.
    forward_retry_for: float = 86400.0
    #: Seconds one webhook attempt may take.
    forward_timeout: float = 15.0
    # -- Redis Streams --
    redis_url: str | None = field(default=None, repr=False)
    redis_stream: str = "fluxhook:events"
    #: Approximate MAXLEN of the stream (XADD MAXLEN ~).
    redis_maxlen: int = 100_000
    # -- NATS JetStream --
    nats_url: str | None = field(default=None, repr=False)
    nats_subject: str = "fluxhook.events"
    # -- links in events --
    #: How long the per-file `link` in a delivered event works (signed when each attempt is sent).
    event_link_ttl: float = 86400.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Integrations:
        keys = parse_api_keys(env.get("FLUXHOOK_API_KEYS", ""))
        urls = _split(env.get("FLUXHOOK_FORWARD_URL", ""))
        for position, url in enumerate(urls, 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(f"FLUXHOOK_FORWARD_URL: endpoint #{position} is not an http(s) URL")
        secret = env.get("FLUXHOOK_FORWARD_SECRET") or None
        if urls and secret is None:
            raise SettingsError("FLUXHOOK_FORWARD_URL is set but FLUXHOOK_FORWARD_SECRET is not: "
                               "webhooks out are signed with a whsec_ secret")
        if secret is not None and not _whsec_ok(secret):
            raise SettingsError("FLUXHOOK_FORWARD_SECRET must be a whsec_<base64> secret of at least 16 bytes; generate"
                               " one with `python -c 'import base64,os;"
                               " print(\"whsec_\"+base64.b64encode(os.urandom(32)).decode())'`")
        events = frozenset(_split(env.get("FLUXHOOK_FORWARD_EVENTS", ""))) or TERMINAL_EVENTS
        unknown = sorted(events - set(EVENT_TYPES))
        if unknown:
            raise SettingsError(f"FLUXHOOK_FORWARD_EVENTS: unknown type(s) {', '.join(unknown)};"
                               f" known: {', '.join(EVENT_TYPES)}")
        api_url = env.get("FLUXHOOK_API_URL") or None
        if api_url is not None and (urlsplit(api_url).scheme not in ("http", "https")
                                    or not urlsplit(api_url).hostname):
            raise SettingsError(f"FLUXHOOK_API_URL must be an http(s) URL, got {api_url!r}")
        redis_url = env.get("FLUXHOOK_REDIS_URL") or None
        if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError("FLUXHOOK_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        nats_url = env.get("FLUXHOOK_NATS_URL") or None
        if nats_url is not None and not all(
            urlsplit(u.strip()).scheme in ("nats", "tls", "ws", "wss") for u in nats_url.split(",")
        ):
            raise SettingsError("FLUXHOOK_NATS_URL must be nats:// (or tls://, ws://, wss://) URL(s)")
        link_ttl = positive(env, "FLUXHOOK_EVENT_LINK_TTL", 86400.0)
        if link_ttl > MAX_LINK_TTL:
            raise SettingsError(f"FLUXHOOK_EVENT_LINK_TTL must be at most {int(MAX_LINK_TTL)} seconds (7 days: the"
                                f" longest an S3 presigned URL can live); got {link_ttl:g}")
        return cls(
            api_keys=keys,
            idempotency_ttl=positive(env, "FLUXHOOK_IDEMPOTENCY_TTL", 86400.0),
            api_url=api_url.rstrip("/") if api_url else None,
            api_key=env.get("FLUXHOOK_API_KEY") or None,
            sse_heartbeat=positive(env, "FLUXHOOK_SSE_HEARTBEAT", 15.0),
            outbox_retention=positive(env, "FLUXHOOK_OUTBOX_RETENTION", 7 * 86400.0),
            forward_urls=urls,
            forward_secret=secret,
            forward_events=events,
            forward_retry_for=positive(env, "FLUXHOOK_FORWARD_RETRY_FOR", 86400.0),
            forward_timeout=positive(env, "FLUXHOOK_FORWARD_TIMEOUT", 15.0),
            redis_url=redis_url,
            redis_stream=env.get("FLUXHOOK_REDIS_STREAM") or "fluxhook:events",
            redis_maxlen=int(positive(env, "FLUXHOOK_REDIS_MAXLEN", 100_000)),
            nats_url=nats_url,
            nats_subject=env.get("FLUXHOOK_NATS_SUBJECT") or "fluxhook.events",
            event_link_ttl=link_ttl,
        )

    def secrets(self) -> tuple[str, ...]:
        """Every secret here, for the redactor (URLs may carry tokens; redacted whole)."""
        found = [*(k.secret for k in self.api_keys), *self.forward_urls]
        for value in (self.api_key, self.forward_secret, self.redis_url, self.nats_url):
            if value:
                found.append(value)
        if self.forward_secret:
            found.append(self.forward_secret.removeprefix("whsec_"))
        return tuple(found)


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _whsec_ok(value: str) -> bool:
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) >= 16
    except (binascii.Error, ValueError):
        return False

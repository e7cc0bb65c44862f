"""Every FLUXHOOK_* environment variable fluxhook knows, in one place, and the warning for the others.

A FLUXHOOK_* variable that no code reads is almost always a typo (a letter missing from
`FLUXHOOK_PUBLIC_URL`) or a setting of another version; unnoticed, it leaves the default in force. The entry
points (`fluxhook`, the uvicorn app factory, the Lambda handler) call :func:`warn_unknown_variables` once, after
logging is set up: each unknown name is logged at WARNING with its closest known name (difflib). The registry is
:data:`SETTINGS` plus what the providers' data derives (each dialect's base-URL variable and its
`FLUXHOOK_<NAME>_MAX_ACTIVE`): a variable added to :meth:`~receiver.config.settings.Settings.from_env` is added
here too (tests/receiver/config/test_variables.py fails, naming it, until it is).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping

from submitter.dialects import DIALECTS

__all__ = [
    "PREFIX", "SETTINGS", "TOOLING", "known_variables", "max_active_variable", "unknown_variables",
    "warn_unknown_variables",
]

PREFIX = "FLUXHOOK_"

#: What Settings.from_env and Integrations.from_env read (besides the providers' variables below).
SETTINGS: tuple[str, ...] = (
    "FLUXHOOK_PUBLIC_URL", "FLUXHOOK_ALLOW_HTTP", "FLUXHOOK_SECRET_KEY", "FLUXHOOK_DB", "FLUXHOOK_DB_POOL",
    "FLUXHOOK_RESULTS", "FLUXHOOK_S3_ENDPOINT", "FLUXHOOK_DOWNLOAD_HOSTS", "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE",
    "FLUXHOOK_DOWNLOAD_ALLOW_HTTP", "FLUXHOOK_MAX_DOWNLOAD_BYTES", "FLUXHOOK_DOWNLOAD_CONCURRENCY",
    "FLUXHOOK_DOWNLOAD_TIMEOUT", "FLUXHOOK_DOWNLOAD_WINDOW", "FLUXHOOK_MAX_OUTPUTS", "FLUXHOOK_MAX_BODY",
    "FLUXHOOK_POLL_AFTER", "FLUXHOOK_POLL_MAX_INTERVAL", "FLUXHOOK_JOB_DEADLINE", "FLUXHOOK_SWEEP_INTERVAL",
    "FLUXHOOK_LEASE_SECONDS", "FLUXHOOK_BODY_TIMEOUT", "FLUXHOOK_EVENT_RETENTION", "FLUXHOOK_DRAIN_TIMEOUT",
    "FLUXHOOK_FAILPOINTS", "FLUXHOOK_MAX_EVENTS_PER_JOB", "FLUXHOOK_MAX_HEADER_BYTES", "FLUXHOOK_HEADER_TIMEOUT",
    "FLUXHOOK_MAX_CONNECTIONS", "FLUXHOOK_IDLE_TIMEOUT", "FLUXHOOK_MAX_STREAMS", "FLUXHOOK_MAX_STREAMS_PER_KEY",
    "FLUXHOOK_HOOKS_RESERVED", "FLUXHOOK_SWEEP_TOKEN", "FLUXHOOK_FORWARDED_ALLOW_IPS", "FLUXHOOK_LOG_FORMAT",
    "FLUXHOOK_METRICS_TOKEN", "FLUXHOOK_METRICS_PUBLIC",
    # receiver/config/integrations.py
    "FLUXHOOK_API_KEYS", "FLUXHOOK_IDEMPOTENCY_TTL", "FLUXHOOK_EVENT_LINK_TTL", "FLUXHOOK_API_URL", "FLUXHOOK_API_KEY",
    "FLUXHOOK_SSE_HEARTBEAT", "FLUXHOOK_OUTBOX_RETENTION", "FLUXHOOK_FORWARD_URL", "FLUXHOOK_FORWARD_SECRET",
    "FLUXHOOK_FORWARD_EVENTS", "FLUXHOOK_FORWARD_RETRY_FOR", "FLUXHOOK_FORWARD_TIMEOUT", "FLUXHOOK_REDIS_URL",
    "FLUXHOOK_REDIS_STREAM", "FLUXHOOK_REDIS_MAXLEN", "FLUXHOOK_NATS_URL", "FLUXHOOK_NATS_SUBJECT",
)

#: Read by the test suite and the benchmarks, never by the receiver: set beside its own, they are not typos.
TOOLING: tuple[str, ...] = (
    "FLUXHOOK_TEST_PG", "FLUXHOOK_BENCH_PG", "FLUXHOOK_BENCH_NO_PIN", "FLUXHOOK_UPDATE_SCREENSHOT",
)

log = logging.getLogger("fluxhook")


def max_active_variable(provider: str) -> str:
    """The variable overriding `provider`'s cap on active jobs: `FLUXHOOK_DEERAPI_REPLICATE_MAX_ACTIVE`."""
    return f"{PREFIX}{provider.upper().replace('-', '_')}_MAX_ACTIVE"


def known_variables() -> frozenset[str]:
    """Every FLUXHOOK_* name fluxhook (or its tests and benchmarks) reads."""
    derived = [d.url_env for d in DIALECTS.values()] + [max_active_variable(name) for name in DIALECTS]
    return frozenset((*SETTINGS, *TOOLING, *derived))


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A message for each FLUXHOOK_* variable of `environ` that nothing reads, sorted, with its closest
    known name when there is one (never the value: it may be a secret)."""
    known = known_variables()
    # Compared without the prefix every name shares, which would make any two names look alike.
    stems = sorted(k.removeprefix(PREFIX) for k in known)
    messages = []
    for name in sorted(n for n in environ if n.startswith(PREFIX) and n not in known):
        close = difflib.get_close_matches(name.removeprefix(PREFIX), stems, n=1, cutoff=0.75)
        hint = f": did you mean {PREFIX}{close[0]}?" if close else " (see README, Configuration)"
        messages.append(f"unknown variable {name} is ignored{hint}")
    return messages


def warn_unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """What an entry point does once, after logging is set up: log each unknown FLUXHOOK_* variable at
    WARNING (see :func:`unknown_variables`). Returns the messages."""
    messages = unknown_variables(environ)
    for message in messages:
        log.warning("%s", message, extra={"event": "unknown-variable"})
    return messages

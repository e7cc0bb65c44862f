"""Logging for fluxhook: secrets kept out of every line, the line format, and a rate limit.

Set up by the entry points (`fluxhook` and its `serve`, the uvicorn app factory, the Lambda handler)
with :func:`configure_logging`; nothing else changes the process's logging.

- **Redaction.** httpx logs every request's full URL at INFO, uvicorn logs request lines, and our own
  warnings quote provider answers, which may echo a key or a callback URL. The filter installed here
  runs each record (message and traceback) through a :class:`~receiver.obs.redaction.Redactor` before
  any handler sees it.
- **Format** (FLUXHOOK_LOG_FORMAT). `json`: one JSON object per line, ``{"time": "2026-12-01T11:04:09.123Z",
  "level": "WARNING", "logger": "fluxhook.hooks", "message": "...", "job_id": "fh_...", "provider": "bfl",
  "event": "..."}`` (`job_id`, `provider`, `event` and the other known keys only when the call passed
  them with ``extra=``; a traceback as `exc`). The JSON formatter runs the redaction filter again
  itself, so no handler can skip it.
- **Rate limit.** :class:`LogLimiter` caps lines a caller can provoke (refused callbacks).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from receiver.config.settings import Settings
from receiver.config.variables import warn_unknown_variables
from receiver.obs.redaction import Redactor, scrub_patterns

__all__ = [
    "EXTRA_KEYS", "LOGGERS", "JsonFormatter", "LogLimiter", "RedactingFilter", "configure_logging",
    "install_log_format", "install_redaction", "settings_for_entry_point", "uvicorn_log_config",
]

#: Loggers whose records are filtered where they are made (handlers added later see clean records).
LOGGERS = ("httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access", "fluxhook", "fluxhook.hooks",
           "fluxhook.sweep", "fluxhook.server", "fluxhook.files", "fluxhook.serverless")


class RedactingFilter(logging.Filter):
    """Scrubs a record's message and traceback with `redactor` (known secrets) or, without one, with
    the secret shapes every redactor knows."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor

    def scrub(self, text: str) -> str:
        if self.redactor is None:
            return scrub_patterns(text)
        return self.redactor.scrub(text) or ""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "fluxhook_redacted", False):
            return True
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        record.fluxhook_redacted = True
        return True


def _installed() -> RedactingFilter | None:
    """The filter already on fluxhook's own logger, if any (one process runs one fluxhook)."""
    for existing in logging.getLogger("fluxhook").filters:
        if isinstance(existing, RedactingFilter):
            return existing
    return None


def install_redaction(redactor: Redactor | None = None) -> RedactingFilter:
    """Idempotent: filter our loggers, the libraries' and every handler on the root logger, with
    `redactor`'s secrets (the latest one given: one process runs one fluxhook). Returns the filter."""
    active = _installed() or RedactingFilter()
    if redactor is not None:
        active.redactor = redactor
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in LOGGERS]
    targets += logging.getLogger().handlers
    for target in targets:
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(active)
    return active


def configure_logging(settings: Settings) -> None:
    """What an entry point does once, before it serves or runs a command: redact every secret these
    settings know from all log lines, and use FLUXHOOK_LOG_FORMAT."""
    install_redaction(Redactor.from_settings(settings))
    install_log_format(settings.log_format)


def settings_for_entry_point() -> Settings:
    """What every entry point (the `fluxhook` command, `uvicorn --factory`, the Lambda handler) does first:
    read the settings once, set up logging with them, then warn of each unknown FLUXHOOK_* variable (a typo
    must not leave a default in force unseen)."""
    settings = Settings.from_env()
    configure_logging(settings)
    warn_unknown_variables(os.environ)
    return settings


#: Context a call may pass with ``extra=``: shown as JSON keys.
EXTRA_KEYS = ("job_id", "provider", "event", "sink", "reason", "verdict", "status")


class JsonFormatter(logging.Formatter):
    #: Scrubs by the secrets' shapes until configure_logging installs a filter that knows them.
    _fallback = RedactingFilter()

    def format(self, record: logging.LogRecord) -> str:
        # The filter installed now (one built before configure_logging ran still finds it).
        redaction = _installed() or self._fallback
        redaction.filter(record)  # idempotent: already-scrubbed records pass untouched
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in EXTRA_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value if isinstance(value, (int, float, bool)) else str(value)
        if record.exc_text:
            line["exc"] = record.exc_text
        elif record.exc_info:
            line["exc"] = redaction.scrub(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


#: uvicorn's own loggers keep their handlers (propagate off): their formatters are switched too.
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def install_log_format(log_format: str) -> None:
    """Give every handler of the root logger and of uvicorn's loggers the `log_format` formatter
    (`json`; `text` leaves them as configured). Adds a stderr handler if the root has none."""
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    redaction = install_redaction()
    formatter = JsonFormatter()
    handlers = list(root.handlers)
    for name in _UVICORN:
        handlers += logging.getLogger(name).handlers
    for handler in handlers:
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(formatter)
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redaction)


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's `log_config` for `log_format`: its own default for `text`; for `json`, the same loggers
    and handlers with :class:`JsonFormatter`, so even the lines before the app starts are JSON."""
    from uvicorn.config import LOGGING_CONFIG  # uvicorn loads on first use: a Lambda never needs it

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        for name in config["formatters"]:
            config["formatters"][name] = {"()": JsonFormatter}
    return config


class LogLimiter:
    """At most `limit` lines per key per `window` seconds; then one "suppressed K" line when the
    window ends (at the next line for that key, or :meth:`flush`). Keys beyond `max_keys` share one."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float], *, limit: int = 10,
                 window: float = 60.0, max_keys: int = 64,
                 on_suppressed: Callable[[int], None] | None = None) -> None:
        self.logger, self.clock, self.limit, self.window, self.max_keys = logger, clock, limit, window, max_keys
        self.on_suppressed = on_suppressed
        #: key -> [window start, lines logged, lines suppressed]
        self._seen: dict[str, list[float]] = {}

    def log(self, level: int, key: str, msg: str, *args: object, extra: dict[str, object] | None = None) -> bool:
        """Log `msg` unless `key` is over its limit; True if it was logged."""
        now = self.clock()
        if key not in self._seen and len(self._seen) >= self.max_keys:
            self._expire(now)
            if len(self._seen) >= self.max_keys:
                key = "[other]"
        state = self._seen.get(key)
        if state is not None and now - state[0] >= self.window:
            self._report(key, state)
            state = None
        if state is None:
            state = self._seen[key] = [now, 0, 0]
        if state[1] < self.limit:
            state[1] += 1
            self.logger.log(level, msg, *args, extra=extra)
            return True
        state[2] += 1
        if self.on_suppressed is not None:
            self.on_suppressed(1)
        return False

    def flush(self) -> None:
        """Report every suppression now (its window need not have ended)."""
        for key, state in list(self._seen.items()):
            self._report(key, state)

    def _expire(self, now: float) -> None:
        for key, state in list(self._seen.items()):
            if now - state[0] >= self.window:
                self._report(key, state)

    def _report(self, key: str, state: list[float]) -> None:
        self._seen.pop(key, None)
        if state[2]:
            self.logger.warning("suppressed %d more line(s) like %r in %.0f s", int(state[2]), key, self.window,
                                extra={"event": "log-suppressed", "reason": key})

"""Log line formats (FLUXHOOK_LOG_FORMAT) and a rate limit for lines an attacker can provoke.

`json`: one JSON object per line, ``{"time": "2026-12-01T11:04:09.123Z", "level": "WARNING",
"logger": "fluxhook.hooks", "message": "...", "job_id": "fh_...", "provider": "bfl", "event": "..."}``
(`job_id`, `provider`, `event` and the other known keys only when the call passed them with
``extra=``; a traceback as `exc`). Every record still passes the redaction filter
(:mod:`receiver.obs.logs`) first: the formatter runs it again itself, so no handler can skip it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

from receiver.obs.logs import _FILTER, LOGGERS

__all__ = ["EXTRA_KEYS", "TEXT_FORMAT", "JsonFormatter", "LogLimiter", "install_log_format"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Context a call may pass with ``extra=``: shown as JSON keys.
EXTRA_KEYS = ("job_id", "provider", "event", "sink", "reason", "verdict", "status")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        _FILTER.filter(record)  # idempotent: already-scrubbed records pass untouched
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
            line["exc"] = _FILTER.scrub(self.formatException(record.exc_info))
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
    formatter = JsonFormatter()
    handlers = list(root.handlers)
    for name in _UVICORN:
        handlers += logging.getLogger(name).handlers
    for handler in handlers:
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(formatter)
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's `log_config` for `log_format`: its own default for `text`; for `json`, the same loggers
    and handlers with :class:`JsonFormatter`, so even the lines before the app starts are JSON."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

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

"""Keep secrets out of every log line, ours and other libraries'.

httpx logs every request's full URL at INFO, uvicorn logs request lines, and our
own warnings quote provider answers, which may echo a key or a callback URL. The
filter installed here runs each record (message and traceback) through the
process's :class:`~receiver.obs.redaction.Redactor` before any handler sees it.
"""

from __future__ import annotations

import logging

from receiver.obs.redaction import Redactor, scrub_patterns

__all__ = ["LOGGERS", "install_redaction"]

#: Loggers whose records are filtered where they are made (handlers added later see clean records).
LOGGERS = ("httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access", "fluxhook", "fluxhook.hooks",
           "fluxhook.sweep", "fluxhook.server", "fluxhook.files", "fluxhook.serverless")


class _Redact(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.redactor: Redactor | None = None

    def scrub(self, text: str) -> str:
        if self.redactor is None:
            return scrub_patterns(text)
        return self.redactor.scrub(text) or ""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_fluxhook_redacted", False):
            return True
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        record._fluxhook_redacted = True
        return True


_FILTER = _Redact()


def install_redaction(redactor: Redactor | None = None) -> None:
    """Idempotent: filter our loggers, the libraries' and every handler on the root logger, with
    `redactor`'s secrets (the latest one installed: one process runs one fluxhook)."""
    if redactor is not None:
        _FILTER.redactor = redactor
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in LOGGERS]
    targets += logging.getLogger().handlers
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)

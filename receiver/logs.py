"""Keep secrets out of logs that other libraries write.

httpx logs every request's full URL at INFO. Ours carry secrets: callback URLs
end in a per-job token, and result URLs hold a signature in their query. The
filter installed here rewrites those records before any handler sees them.
"""

from __future__ import annotations

import logging
import re

__all__ = ["install_redaction", "redact"]

_HOOK_TOKEN = re.compile(r"(/hooks/[^/\s]+/[^/\s]+/)[^/\s?\"']+")
_QUERY = re.compile(r"\?[^\s\"']*")


def redact(text: str) -> str:
    """Drop query strings and callback tokens from any URL in `text`."""
    return _QUERY.sub("?<redacted>", _HOOK_TOKEN.sub(r"\1<token>", text))


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


_FILTER = _Redact()


def install_redaction() -> None:
    """Idempotent: attach the redacting filter to the loggers that print request URLs."""
    for name in ("httpx", "uvicorn.access"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

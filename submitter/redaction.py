"""Removing secrets from text: the pure core that the client and the receiver share.

:func:`scrub` takes the secrets the caller knows (a key, a callback URL, a webhook
secret) and also removes whatever has the shape of a credential: the token segment
of a callback path, URL query strings (result URL signatures), `Bearer ...`,
`x-key: ...`. The receiver's :class:`receiver.obs.redaction.Redactor` knows every
secret of a deployment and calls this.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MARK", "scrub", "scrub_patterns"]

MARK = "[redacted]"
#: Shorter values are not treated as secrets (they would match ordinary words).
MIN_SECRET = 8

_HOOK_TOKEN = re.compile(r"(/hooks/[^/\s\"'\\]+/[^/\s\"'\\]+/)[^/\s?#\"'\\]+")
_QUERY = re.compile(r"(?<=[^\s\"'?])\?[^\s\"'#<>\\]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)(\s+|%20)[A-Za-z0-9._~+/=:-]{6,}")
_KEY_FIELD = re.compile(
    r"""(?i)((?:x-key|api[_-]?key|webhook[_-]?secret|authorization|x-webhook-secret)["']?\s*[:=]\s*["']?)"""
    r"""[^\s"',}]{4,}"""
)


def scrub_patterns(text: str) -> str:
    """Remove what looks like a credential, whoever's it is. Each pattern runs only where a plain
    substring search says it could match (most text has none: a few microseconds)."""
    lower = text.lower()
    if "/hooks/" in text:
        text = _HOOK_TOKEN.sub(r"\1" + MARK, text)
    if "?" in text:
        text = _QUERY.sub("?" + MARK, text)
    if "bearer" in lower or "basic" in lower or "token" in lower:
        text = _BEARER.sub(r"\1\2" + MARK, text)
    if "key" in lower or "secret" in lower or "authorization" in lower:
        text = _KEY_FIELD.sub(r"\1" + MARK, text)
    return text


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without any of `secrets` (in the order given: put longer ones first where one
    contains another) and without credential-shaped values."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET and secret in text:
            text = text.replace(secret, MARK)
    return scrub_patterns(text)

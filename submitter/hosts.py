"""Host name allow-lists: `*.bfl.ai` matches subdomains of bfl.ai (not bfl.ai itself), `*` any host.

Hosts and patterns are compared in one canonical form, label by label: IDNA-encoded
(as httpx puts them on the wire), lowercase, without one trailing dot. Anything that is
neither a valid DNS host name (LDH labels) nor a valid IP literal matches nothing, so
`evil.com\\.bfl.ai` or `evil.com%00.bfl.ai` (which httpx passes through verbatim) can
never pass for a subdomain of bfl.ai.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import idna  # a dependency of httpx, and the encoder httpx itself uses for host names

__all__ = ["host_allowed", "normalise_host"]

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: WHATWG "ends in a number": a name whose last label is numeric is parsed as IPv4 by
#: browsers and by some resolvers (`127.1`, `0x7f.1`); only dotted quads are IP literals here.
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")
_MAX_NAME = 253


def normalise_host(host: str) -> str | None:
    """The canonical form of `host`, or None if it is neither a valid host name nor an IP literal.

    Names: lowercase A-labels (IDNA 2008, as httpx encodes them), one trailing dot removed,
    each label 1-63 letters, digits or hyphens, not starting or ending with a hyphen, at
    most 253 characters. IP literals: IPv4 dotted quads and IPv6 (with or without
    brackets, no zone index), in their compressed form.
    """
    if not isinstance(host, str) or not host:
        return None
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            return None
        return _ipv6(host[1:-1])
    if ":" in host:
        return _ipv6(host)
    name = host[:-1] if host.endswith(".") else host
    if not name:
        return None
    if name.isascii():
        name = name.lower()
    else:
        try:
            name = idna.encode(name.lower()).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    labels = name.split(".")
    if len(name) > _MAX_NAME or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if any(label.startswith("xn--") and not _a_label_ok(label) for label in labels):
        return None
    if _NUMERIC.fullmatch(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            return None
    return name


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """True if `host` matches one of the allow-list `patterns`.

    A pattern is `*` (any valid host), `*.example.com` (names with at least one more
    label in front of example.com, compared by whole labels), or one exact name or IP
    literal. An invalid host matches nothing; so does an invalid pattern.
    """
    canonical = normalise_host(host)
    if canonical is None:
        return False
    is_ip = _is_ip(canonical)
    labels = canonical.split(".")
    for raw in patterns:
        pattern = raw.strip()
        if pattern == "*":
            return True
        if pattern.startswith("*."):
            suffix = normalise_host(pattern[2:])
            if suffix is None or is_ip or _is_ip(suffix):
                continue
            tail = suffix.split(".")
            if len(labels) > len(tail) and labels[-len(tail):] == tail:
                return True
        elif normalise_host(pattern) == canonical:
            return True
    return False


def _ipv6(text: str) -> str | None:
    if "%" in text:  # zone index: meaningless beyond this machine
        return None
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def _is_ip(canonical: str) -> bool:
    return ":" in canonical or _NUMERIC.fullmatch(canonical.rsplit(".", 1)[-1]) is not None


def _a_label_ok(label: str) -> bool:
    try:
        return idna.encode(idna.decode(label)).decode("ascii") == label
    except (idna.IDNAError, UnicodeError, ValueError):
        return False

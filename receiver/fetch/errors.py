"""Why a result file could not be stored (:class:`DownloadError`), and result URLs as they may
appear in messages and logs (:func:`redact_url`: never the signature)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import httpx

__all__ = ["DownloadError", "Kind", "error", "redact_url", "transport_error"]

Kind = Literal["expired", "transient", "rejected"]


class DownloadError(Exception):
    """A result file could not be stored; `kind` says what the caller should do:

    - ``expired``: the URL no longer works; get a fresh one from the provider.
    - ``transient``: network, server or disk trouble; retry later.
    - ``rejected``: the URL or the response is unacceptable; do not retry.
    """

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind


def redact_url(url: str | httpx.URL) -> str:
    """`scheme://host[:port]/…/name`: no userinfo, query (signature) or fragment, and only the
    last path segment (some hosts, e.g. replicate.delivery, grant access by the path itself)."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme:
        return "<invalid URL>"
    host = f"[{host}]" if ":" in host else host
    name = parts.path.rsplit("/", 1)[-1]
    path = f"/…/{name}" if parts.path.count("/") > 1 else parts.path
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{path}"


def error(kind: Kind, problem: str, url: httpx.URL | str) -> DownloadError:
    """A DownloadError saying `problem`, with the URL redacted."""
    return DownloadError(kind, f"{problem}: {redact_url(url)}")


def transport_error(exc: httpx.TransportError, url: httpx.URL) -> DownloadError:
    """A network failure, as a transient DownloadError that never echoes the URL's signature."""
    detail = str(exc)
    if url.query:  # never echo the signature, whatever the exception says
        detail = detail.replace(url.query.decode("ascii", "replace"), "<redacted>")
    return error("transient", f"{type(exc).__name__}{f' ({detail})' if detail else ''}", url)

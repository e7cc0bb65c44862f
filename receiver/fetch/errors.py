"""Why a result file could not be stored (:class:`DownloadError`), and result URLs as they may
appear in messages and logs (:func:`submitter.urls.redact_url`: never the signature)."""

from __future__ import annotations

from typing import Literal

import httpx

from submitter.urls import redact_url

__all__ = ["DownloadError", "Kind", "error", "transport_error"]

Kind = Literal["expired", "transient", "rejected"]


class DownloadError(Exception):
    """A result file could not be stored; `kind` says what the caller should do:

    - ``expired``: the URL no longer works; get a fresh one from the provider.
    - ``transient``: network, server or disk trouble; retry later.
    - ``rejected``: the URL or the response is unacceptable; do not retry.
    """

    def __init__(self, kind: Kind, message: str, *, storage: str | None = None) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        #: Set when the result store failed, not the download: the cause (`ENOTDIR`, `NoSuchBucket`), the same
        #: for every job while it lasts (receiver.results.contract.StorageError.kind).
        self.storage = storage


def error(kind: Kind, problem: str, url: httpx.URL | str) -> DownloadError:
    """A DownloadError saying `problem`, with the URL redacted."""
    return DownloadError(kind, f"{problem}: {redact_url(url)}")


def transport_error(exc: httpx.TransportError, url: httpx.URL) -> DownloadError:
    """A network failure, as a transient DownloadError that never echoes the URL's signature."""
    detail = str(exc)
    if url.query:  # never echo the signature, whatever the exception says
        detail = detail.replace(url.query.decode("ascii", "replace"), "<redacted>")
    return error("transient", f"{type(exc).__name__}{f' ({detail})' if detail else ''}", url)

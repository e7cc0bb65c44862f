"""Where result files are kept: a local folder (the default) or an S3-compatible object store.

The interface both implement is in receiver/results/contract.py; the stores are
receiver/results/local.py and receiver/results/s3.py (obstore is imported only when an
``s3://`` store is used).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from receiver.config.env import SettingsError
from receiver.results.contract import (
    MISSING_BUCKET,
    FileWriter,
    ResultStore,
    Stat,
    StorageError,
    StoredFile,
    key_for,
)
from receiver.results.local import LocalResultStore
from receiver.results.s3 import S3ResultStore

if TYPE_CHECKING:
    from receiver.config.settings import Settings

__all__ = [
    "START_CHECK_TIMEOUT", "FileWriter", "ResultStore", "Stat", "StorageError", "StoredFile", "check_at_start",
    "from_settings", "key_for", "presigned_origin",
]

log = logging.getLogger("fluxhook.results")

#: Seconds `fluxhook serve`'s check of the result store may take before it warns and goes on.
START_CHECK_TIMEOUT = 10.0


def from_settings(settings: Settings) -> ResultStore:
    """The store FLUXHOOK_RESULTS names: ``s3://bucket[/prefix]`` or a local folder."""
    url = settings.results_url
    if url and url.startswith("s3://"):
        return S3ResultStore.from_url(url, endpoint=settings.s3_endpoint)
    return LocalResultStore(settings.results)


def presigned_origin(store: ResultStore) -> str | None:
    """Where `store`'s presigned URLs point (``scheme://host[:port]``), or None for a local folder (its files
    are served by the receiver itself): FLUXHOOK_S3_ENDPOINT's origin, else AWS's regional host (obstore
    signs path-style URLs there). The UI's CSP lets images come from it (receiver/web/ui/pages.py)."""
    if not isinstance(store, S3ResultStore):
        return None
    if store.endpoint:
        parts = urlsplit(store.endpoint)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # never a user:password@ part
    return f"https://s3.{store.region}.amazonaws.com"


async def check_at_start(settings: Settings) -> None:
    """`fluxhook serve`'s check of FLUXHOOK_RESULTS before it listens (the /readyz probe, once).

    A bucket that does not exist is a SettingsError (`serve` refuses to start: nothing could ever be
    stored, and each succeeded job would wait for it). Any other failure (a folder not writable yet, a
    store that does not answer, credentials being rotated) is logged as a warning and `serve` starts:
    callbacks are still recorded, downloads are retried until the store works, and /readyz says why
    it is not ready meanwhile."""
    store = from_settings(settings)
    try:
        async with asyncio.timeout(START_CHECK_TIMEOUT):
            await store.check()
    except StorageError as exc:
        if exc.kind == MISSING_BUCKET:
            raise SettingsError(f"FLUXHOOK_RESULTS: {exc}") from None
        log.warning("FLUXHOOK_RESULTS: %s (starting anyway: downloads are retried until it works)", exc,
                    extra={"event": "results-check", "reason": exc.kind})
    except TimeoutError:
        log.warning("FLUXHOOK_RESULTS: %s did not answer within %.0f s (starting anyway: downloads are retried"
                    " until it works)", store.url, START_CHECK_TIMEOUT, extra={"event": "results-check"})
    finally:
        await store.close()

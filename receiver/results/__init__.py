"""Where result files are kept: a local folder (the default) or an S3-compatible object store.

The interface both implement is in receiver/results/contract.py; the stores are
receiver/results/local.py and receiver/results/s3.py (obstore is imported only when an
``s3://`` store is used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.results.contract import FileWriter, ResultStore, Stat, StoredFile, key_for
from receiver.results.local import LocalResultStore
from receiver.results.s3 import S3ResultStore

if TYPE_CHECKING:
    from receiver.config.settings import Settings

__all__ = ["FileWriter", "ResultStore", "Stat", "StoredFile", "from_settings", "key_for"]


def from_settings(settings: Settings) -> ResultStore:
    """The store FLUXHOOK_RESULTS names: ``s3://bucket[/prefix]`` or a local folder."""
    url = settings.results_url
    if url and url.startswith("s3://"):
        return S3ResultStore.from_url(url, endpoint=settings.s3_endpoint)
    return LocalResultStore(settings.results)

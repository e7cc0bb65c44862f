"""Where result files are kept: a local folder (the default) or an S3-compatible object store.

Both stores lay files out as ``{root}/{job_id}/{n}.{ext}`` and record that relative path
(``{job_id}/{n}.{ext}``) in the ledger. A download writes through a :class:`Sink`: nothing is
visible at the final name until :meth:`Sink.commit`; :meth:`Sink.abort` leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from receiver.config.settings import Settings
    from receiver.fetch.download import StoredFile

__all__ = ["ResultStore", "Sink", "Stat", "from_settings", "key_for"]


@dataclass(frozen=True)
class Stat:
    """A stored file as the store itself describes it."""

    size: int
    sha256: str | None
    content_type: str | None


class Sink(Protocol):
    """One file being written: `begin` once (the verified media type), `write` the body in
    order, then exactly one of `commit` (the file appears, complete) or `abort` (nothing stays).
    Failures to store raise OSError."""

    async def begin(self, media: str) -> None: ...

    async def write(self, data: bytes | list[bytes], digest: Any) -> None:
        """Store `data` (bytes, or parts to store one after the other) next and update `digest`
        (a hashlib object) with it, off the event loop."""
        ...

    async def commit(self, size: int, sha256: str) -> StoredFile: ...

    async def abort(self) -> None: ...


class ResultStore(Protocol):
    #: `s3://bucket/prefix` or the local folder, as configured.
    url: str

    def writer(self, job_id: str, n: int) -> Sink: ...

    async def clean_partials(self, job_id: str | None, older_than: float) -> int:
        """Remove the leftovers of dead uploads (of one job, or all) older than `older_than` seconds."""
        ...

    def location(self, path: str) -> str:
        """Where the file recorded as `path` (``job/n.ext``) lives: a local path or ``s3://...``."""
        ...

    async def presign(self, path: str, expires: float) -> str:
        """A time-limited GET URL for the file (local store: its path)."""
        ...

    async def stat(self, path: str) -> Stat | None: ...

    async def close(self) -> None: ...


def key_for(job_id: str, n: int, ext: str) -> str:
    """The path a result file is recorded under, relative to the store's root."""
    return f"{job_id}/{n}.{ext}"


def from_settings(settings: Settings) -> ResultStore:
    """The store FLUXHOOK_RESULTS names: ``s3://bucket[/prefix]`` or a local folder."""
    url = getattr(settings, "results_url", None)
    if url and url.startswith("s3://"):
        from receiver.results.s3 import S3ResultStore

        return S3ResultStore.from_url(url, endpoint=settings.s3_endpoint)
    from receiver.results.local import LocalResultStore

    return LocalResultStore(settings.results)

"""What every result store offers (:class:`ResultStore`), how a file is written into one
(:class:`FileWriter`), and what a stored file is (:class:`StoredFile`, :class:`Stat`).

Both stores lay files out as ``{root}/{job_id}/{n}.{ext}`` and record that relative path
(``{job_id}/{n}.{ext}``) in the ledger. A download writes through a :class:`FileWriter`: nothing is
visible at the final name until :meth:`FileWriter.commit`; :meth:`FileWriter.abort` leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "MISSING_BUCKET", "PROBE_BODY", "FileWriter", "ResultStore", "Stat", "StorageError", "StoredFile", "key_for",
    "probe_name",
]

#: What a readiness probe writes (and removes at once).
PROBE_BODY = b"fluxhook readiness probe\n"


#: StorageError.kind of an object store whose bucket does not exist: nothing could ever be stored there.
MISSING_BUCKET = "NoSuchBucket"


class StorageError(OSError):
    """The result store could not do what was asked. The message names the place (the file's path, or the
    bucket) and FLUXHOOK_RESULTS, fit for a job's note and a log line (no credentials); `kind` is the cause
    (`ENOTDIR`, `EACCES`, `NoSuchBucket`, `AccessDenied`, ...), so a log can say each cause once."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Stat:
    """A stored file as the store itself describes it."""

    size: int
    sha256: str | None
    content_type: str | None


@dataclass(frozen=True)
class StoredFile:
    """A result file stored: `path` on disk (None in an object store), `key` as the ledger records it."""

    path: Path | None
    size: int
    sha256: str
    content_type: str
    #: Relative to the result store's root: `{job_id}/{n}.{ext}`.
    key: str = ""


class FileWriter(Protocol):
    """One file being written: `begin` once (the verified media type), `write` the body in
    order, then exactly one of `commit` (the file appears, complete) or `abort` (nothing stays).
    Failures to store raise StorageError."""

    @property
    def name(self) -> str:
        """What messages call the file (its final name once `begin` chose it)."""
        ...

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

    def writer(self, job_id: str, n: int) -> FileWriter: ...

    async def clean_partials(self, job_id: str | None, older_than: float) -> int:
        """Remove the leftovers of dead uploads (of one job, or all) older than `older_than` seconds;
        StorageError when the store cannot be read."""
        ...

    def location(self, path: str) -> str:
        """Where the file recorded as `path` (``job/n.ext``) lives: a local path or ``s3://...``."""
        ...

    async def presign(self, path: str, expires: float) -> str:
        """A time-limited GET URL for the file (local store: its path)."""
        ...

    async def stat(self, path: str) -> Stat | None: ...

    async def check(self) -> None:
        """Write a small probe file (named by `probe_name`) at the store's root and remove it;
        StorageError when either fails."""
        ...

    async def probe(self) -> str | None:
        """:meth:`check`'s outcome: None when it passed, else what is wrong, starting ``results: ``,
        fit for an operator (no credentials)."""
        ...

    async def close(self) -> None: ...


def key_for(job_id: str, n: int, ext: str) -> str:
    """The path a result file is recorded under, relative to the store's root."""
    return f"{job_id}/{n}.{ext}"


def probe_name() -> str:
    """A readiness probe's file name: hidden, and distinct per host, process and probe."""
    return f".readyz-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.probe"

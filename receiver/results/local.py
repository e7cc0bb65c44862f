"""Result files in a local folder: a temp file `.{n}.{random}.part` beside the final name,
fsynced, then renamed to `{n}.{ext}` (and the folder fsynced), so a file appears only complete."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from receiver.results.contract import PROBE_BODY, Stat, StorageError, StoredFile, key_for, probe_name
from submitter.media import extension_for, type_for_extension

__all__ = ["LocalFileWriter", "LocalResultStore", "clean_partials"]


class LocalFileWriter:
    """Writes `dest` + "." + extension through a temp file beside it. A failure is a StorageError naming
    the file's path (and, for a result store's writer, FLUXHOOK_RESULTS and its folder: `root`)."""

    def __init__(self, dest: Path, key: str | None = None, *, root: Path | None = None) -> None:
        self.dest = Path(dest).absolute()
        self.key = key
        self.root = root
        self.final: Path | None = None
        self.temp: Path | None = None
        self.media = ""
        self._fh: Any = None

    @property
    def name(self) -> str:
        return self.final.name if self.final is not None else "result file"

    async def begin(self, media: str) -> None:
        self.media = media
        ext = extension_for(media)
        self.final = self.dest.with_name(f"{self.dest.name}.{ext}")
        self.temp = self.dest.with_name(f".{self.dest.name}.{secrets.token_hex(8)}.part")
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._fh = await anyio.open_file(self.temp, "xb")
        except OSError as exc:
            raise self._failed(exc) from exc

    async def write(self, data: bytes | list[bytes], digest: Any) -> None:
        # Joining (at a MiB or more), hashing and writing all release the GIL: one thread
        # hand-off per MiB keeps them off the loop.
        try:
            await anyio.to_thread.run_sync(_write, self._fh.wrapped, digest, data)
        except OSError as exc:
            raise self._failed(exc) from exc

    async def commit(self, size: int, sha256: str) -> StoredFile:
        assert self.final is not None and self.temp is not None
        try:
            fh = self._fh
            await fh.flush()
            await anyio.to_thread.run_sync(os.fsync, fh.wrapped.fileno())
            self._fh = None
            await fh.aclose()
            os.replace(self.temp, self.final)
            self.temp = None
            await anyio.to_thread.run_sync(_fsync_dir, self.final.parent)
        except OSError as exc:
            raise self._failed(exc) from exc
        key = self.key or self.final.name
        return StoredFile(path=self.final, size=size, sha256=sha256, content_type=self.media, key=key)

    def _failed(self, exc: OSError) -> StorageError:
        """`exc` as a StorageError: `cannot write /srv/results/fh_…/0.png (ENOSPC: No space left on device);
        check FLUXHOOK_RESULTS (/srv/results)`."""
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        reason = f"{code}: {exc.strerror}" if exc.strerror else code
        setting = f"; check FLUXHOOK_RESULTS ({self.root.absolute()})" if self.root is not None else ""
        return StorageError(f"cannot write {self.final or self.dest} ({reason}){setting}", code)

    async def abort(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            with suppress(OSError):
                await fh.aclose()
        if self.temp is not None:
            with suppress(OSError):
                self.temp.unlink(missing_ok=True)
            self.temp = None


def _write(fp: Any, digest: Any, data: bytes | list[bytes]) -> None:
    """In the writer thread: hash and write `data`, then hand its pages to the disk."""
    parts = [data] if isinstance(data, bytes) else data
    size = _absorb(fp, digest, parts)
    parts.clear()  # consumed: the parts are freed now, not when the caller's write returns
    if _write_out is not None:
        fp.flush()
        end = fp.tell()
        _write_out(fp.fileno(), end - size, size)


def _absorb(fp: Any, digest: Any, parts: list[bytes]) -> int:
    """Hash and write the parts one after the other (never joined: no copy); return their size."""
    size = 0
    for part in parts:
        digest.update(part)
        fp.write(part)
        size += len(part)
    return size


def _sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), which Python's os module lacks: it starts
    writing a range of the file to disk and returns. Each write's pages are handed to the disk as
    soon as they are written, so the disk writes while the download goes on and the fsync at
    commit waits for the last MiB, not the whole file (32 concurrent 20 MiB results: each fsync
    took about 0.8 s without it, about 0.02 s with it). Only a hint: fsync stays the guarantee.
    None where it is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def write_out(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; a failure only loses the head start

    return write_out


_write_out = _sync_file_range()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalResultStore:
    """`{folder}/{job_id}/{n}.{ext}`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.url = str(self.folder)

    def writer(self, job_id: str, n: int) -> LocalFileWriter:
        return _KeyedFileWriter(self.folder / job_id / str(n), job_id, n, root=self.folder)

    async def clean_partials(self, job_id: str | None, older_than: float) -> int:
        folder = self.folder / job_id if job_id else self.folder
        if not folder.is_dir():
            return 0
        return await asyncio.to_thread(clean_partials, folder, older_than)

    def location(self, path: str) -> str:
        return str(self.folder / path)

    async def presign(self, path: str, expires: float) -> str:
        return str((self.folder / path).absolute())

    async def stat(self, path: str) -> Stat | None:
        target = self.folder / path
        if not target.is_file():
            return None

        def digest() -> str:
            h = hashlib.sha256()
            with open(target, "rb") as fh:
                for block in iter(lambda: fh.read(1024 * 1024), b""):
                    h.update(block)
            return h.hexdigest()

        return Stat(size=target.stat().st_size, sha256=await asyncio.to_thread(digest),
                    content_type=type_for_extension(target.suffix.lstrip(".")))

    async def check(self) -> None:
        """Create the folder if need be, write and fsync a probe file in it, remove it."""
        await asyncio.to_thread(_probe_folder, self.folder, probe_name())

    async def probe(self) -> str | None:
        try:
            await self.check()
        except StorageError as exc:
            return f"results: {exc}"
        return None

    async def close(self) -> None:
        return None


class _KeyedFileWriter(LocalFileWriter):
    def __init__(self, dest: Path, job_id: str, n: int, *, root: Path) -> None:
        super().__init__(dest, root=root)
        self.job_id, self.n = job_id, n

    async def begin(self, media: str) -> None:
        self.key = key_for(self.job_id, self.n, extension_for(media))
        await super().begin(media)


def _probe_folder(folder: Path, name: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / name
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, PROBE_BODY)
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise StorageError(f"{folder} is not writable: {exc.strerror or type(exc).__name__}", code) from exc


def clean_partials(results_dir: Path, older_than: float) -> int:
    """Delete leftover `.<name>.<random>.part` files under `results_dir` last modified more
    than `older_than` seconds ago; return the count.

    Other processes may be downloading into the same folder (an overlapping `fluxhook
    sweep`, another replica): pass an age no running download can reach, such as the
    download timeout plus a margin, so only the temp files of dead downloads go.
    """
    cutoff = time.time() - older_than
    removed = 0
    for root, _dirs, files in os.walk(results_dir):
        for name in files:
            if name.startswith(".") and name.endswith(".part"):
                path = os.path.join(root, name)
                with suppress(FileNotFoundError):
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
    return removed

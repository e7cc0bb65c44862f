"""Serving stored result files (for the gallery).

The files came from URLs that arrived in callbacks, so they are served as inert
data: only the raster image types that downloads verify are labelled as such
(anything else is `application/octet-stream`), browsers are told not to sniff a
type of their own, and a Content-Security-Policy sandbox keeps anything that
does get rendered from running scripts or loading resources. A record whose path
leads outside the results folder (`..`, an absolute path, a symlink) is refused.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path, PurePath
from typing import Any

from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from receiver.results.local import LocalResultStore
from receiver.store import FileRecord, Store
from submitter.media import IMAGE_TYPES, media_type

__all__ = ["SECURITY_HEADERS", "result_response", "served_type", "stored_file", "stored_file_response"]

log = logging.getLogger("fluxhook.files")

#: Sent with every answer, file or not.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}
_FALLBACK = "application/octet-stream"


async def stored_file(store: Store, job_id: str, n: int) -> FileRecord | None:
    """File `n` of the job, if it is stored (what every route serving a result file looks up)."""
    return next((f for f in await store.files(job_id) if f.n == n and f.stored), None)


def served_type(content_type: str | None) -> str:
    """The Content-Type to serve a stored file with: its own if it is an accepted raster type."""
    media = media_type(content_type or "")
    return media if media in IMAGE_TYPES else _FALLBACK


def stored_file_response(results_dir: Path, record: FileRecord, *, max_age: int = 3600) -> Response:
    """The response serving `record`'s file from `results_dir`, or a 404 if it is not stored,
    is missing, is not a regular file, or its path leads outside `results_dir`.

    Cached privately for `max_age` seconds: a stored file does not change under its name.
    """
    found = _inside(results_dir, record)
    if found is None:
        return PlainTextResponse("not found", 404, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
    path, status = found
    headers = {**SECURITY_HEADERS, "Cache-Control": f"private, max-age={max(0, int(max_age))}"}
    return FileResponse(path, headers=headers, media_type=served_type(record.content_type), stat_result=status)


async def result_response(results: Any, record: FileRecord, *, max_age: int = 3600) -> Response:
    """`record`'s file from the configured result store: a local folder serves the file itself
    (:func:`stored_file_response`); an object store answers 307 to a presigned GET valid for
    `max_age` seconds (the bucket serves it, with the Content-Type stored at upload)."""
    if isinstance(results, LocalResultStore):
        return stored_file_response(results.folder, record, max_age=max_age)
    if not record.path or PurePath(record.path).is_absolute() or ".." in PurePath(record.path).parts:
        return PlainTextResponse("not found", 404, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
    url = await results.presign(record.path, max(1, int(max_age)))
    return RedirectResponse(url, 307, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


def _inside(results_dir: Path, record: FileRecord) -> tuple[Path, os.stat_result] | None:
    """`record`'s file, resolved, and its status if it is a regular file inside `results_dir`; else None."""
    if not record.path:
        return None
    relative = PurePath(record.path)
    if relative.is_absolute() or relative.drive:
        log.warning("refusing to serve %s/%d: absolute path %r", record.job_id, record.n, record.path)
        return None
    try:
        root = Path(results_dir).resolve(strict=True)
        path = (root / relative).resolve(strict=True)  # follows symlinks: their target is what is checked
        status = path.stat()
    except (OSError, ValueError, RuntimeError):  # missing, a NUL byte, a symlink loop
        return None
    if path == root or not path.is_relative_to(root):
        log.warning("refusing to serve %s/%d: %r leads outside the results folder", record.job_id, record.n,
                    record.path)
        return None
    return (path, status) if stat.S_ISREG(status.st_mode) else None

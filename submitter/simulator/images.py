"""Real, tiny result images (PNG and JPEG) whose bytes depend on a task id, padded to a size on request."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib

__all__ = ["jpeg_image", "png_image"]

#: A 16x16 baseline JPEG (made once with Pillow); a COM segment is added per task.
_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA0JCgsKCA0LCgsODg0PEyAVExISEyccHhcgLikxMC4pLSwzOko+MzZGNywtQFdB"
    "RkxOUlNSMj5aYVpQYEpRUk//2wBDAQ4ODhMREyYVFSZPNS01T09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09PT09P"
    "T09PT09PT09PT09PT0//wAARCAAQABADASIAAhEBAxEB/8QAFQABAQAAAAAAAAAAAAAAAAAABQb/xAAYEAACAwAAAAAAAAAA"
    "AAAAAAAABAUiMf/EABUBAQEAAAAAAAAAAAAAAAAAAAAC/8QAGhEAAgIDAAAAAAAAAAAAAAAAAAUDBCExYf/aAAwDAQACEQMR"
    "AD8AmFY7Ki6sdlRdWOyowrHZUqe90KmOsn//2Q=="
)



def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_image(task_id: str, size: int = 0) -> bytes:
    """A 16x16 RGB PNG whose colours and tEXt comment depend on `task_id`."""
    r, g, b = hashlib.sha256(task_id.encode()).digest()[:3]
    rows = b"".join(b"\x00" + b"".join(bytes((r ^ x * 16, g ^ y * 16, b)) for x in range(16)) for y in range(16))
    parts = [
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)),
        _png_chunk(b"tEXt", b"Comment\x00fluxhook simulator task " + task_id.encode()),
        _png_chunk(b"IDAT", zlib.compress(rows)),
    ]
    missing = size - sum(map(len, parts)) - 12  # 12: the IEND chunk
    if missing > 0:  # a private, ancillary, safe-to-copy chunk decoders skip
        parts.append(_png_chunk(b"fhPd", bytes(max(0, missing - 12))))
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def jpeg_image(task_id: str, size: int = 0) -> bytes:
    """The embedded JPEG with COM segments (after APP0) carrying `task_id` and any padding."""
    comments = [b"fluxhook simulator task " + task_id.encode()]
    missing = size - len(_JPEG) - len(comments[0]) - 4
    while missing > 0:
        piece = min(65533, max(1, missing - 4))
        comments.append(bytes(piece))
        missing -= piece + 4
    app0_end = 4 + int.from_bytes(_JPEG[4:6], "big")
    segments = b"".join(b"\xff\xfe" + struct.pack(">H", len(c) + 2) + c for c in comments)
    return _JPEG[:app0_end] + segments + _JPEG[app0_end:]

"""Image media types: which raster types results may have, their file extensions, and what a
file's first bytes show. Pure functions, shared by result downloads (receiver/fetch/), the result
stores (receiver/results/), the gallery (receiver/web/files.py) and request inputs
(receiver/cli/inputs.py)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["IMAGE_TYPES", "SNIFF_BYTES", "extension_for", "media_type", "sniff_image", "type_for_extension"]

#: The image types downloaded (and served), with their file extensions: raster formats only.
IMAGE_TYPES: Mapping[str, str] = {
    "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/avif": "avif",
}
_ALIASES = {"image/jpg": "image/jpeg"}
_BY_EXTENSION = {ext: media for media, ext in IMAGE_TYPES.items()}
#: Bytes `sniff_image` needs to decide (enough for an AVIF `ftyp` box with its brands).
SNIFF_BYTES = 256


def media_type(content_type: str) -> str:
    """The media type of a Content-Type value: lowercase, no parameters, aliases resolved."""
    media = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(media, media)


def extension_for(content_type: str) -> str:
    """File extension for one of the accepted image types; ValueError for any other type."""
    try:
        return IMAGE_TYPES[media_type(content_type)]
    except KeyError:
        raise ValueError(f"not an accepted image type: {content_type!r}") from None


def type_for_extension(ext: str) -> str | None:
    """The image type a stored file's extension (without the dot) names, or None."""
    return _BY_EXTENSION.get(ext.lower())


def sniff_image(head: bytes) -> str | None:
    """The image type the first bytes of a file show (one of IMAGE_TYPES), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 16 and head[4:8] == b"ftyp":
        # ISO BMFF: a `ftyp` box first; AVIF names `avif` (image) or `avis` (sequence) as its
        # major or a compatible brand. HEIC and MP4 share the box but not the brands.
        box = int.from_bytes(head[:4], "big")
        if 16 <= box <= len(head) and box % 4 == 0:
            brands = {head[8:12], *(head[i:i + 4] for i in range(16, box, 4))}
            if brands & {b"avif", b"avis"}:
                return "image/avif"
    return None

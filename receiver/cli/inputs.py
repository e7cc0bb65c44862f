"""Local image files as request inputs: `--param input_image=@photo.png` and `"@path"` in batch lines.

Pure functions: read a file, check that it is an image by its first bytes (PNG, JPEG,
WebP, GIF), check the provider's size limit, and encode it the way the provider takes it:

* BFL shapes (bfl, deerapi, cometapi): raw base64 in the field (BFL accepts "URL or
  base64" for `input_image`; the other image fields follow the same convention).
* Replicate shapes: a `data:<type>;base64,...` URI.

Limits, and how well each is sourced:

* BFL: `input_image` "URL or base64; <=20 MB / 20 MP" (README.md, "Local images";
  from docs.bfl.ai FLUX.2 edit docs). We apply 20 MB to each image file. BFL documents no
  limit on the whole request body; we also refuse a body whose images add up to more
  than :data:`BFL_BODY_LIMIT` (our own guard, not a documented number).
* Replicate: a data URI "is only recommended if the file is less than 1MB"
  (https://replicate.com/docs/topics/predictions/input-files). It is a recommendation, not a
  documented hard limit; we refuse over 1 MB (a clear error now beats a vague one later) and
  tell the user to host the file and pass its URL instead.

A value `@@text` is the literal string `@text` (an escape for fields that take no image).

How a file is read (each step on the open descriptor, so what is checked is what is read):
opened non-blocking (a FIFO cannot hold up the open), `fstat`-ed, refused unless it is a regular
file (a symlink to one is fine; /dev/zero, a FIFO, a socket or a directory is not), refused if its
size is over the limit, and read for at most the limit plus one byte (a file that grew since, or
one whose size reads 0 as /proc's do, is refused once it passes the limit). :func:`check_params`
(validation: `batch --check` and the check before a batch is sent) looks at the type, the size and
the first bytes only; :func:`resolve_params` reads and encodes, when the request is sent.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitter.media import sniff_image

__all__ = [
    "BFL_BODY_LIMIT",
    "BFL_IMAGE_FIELDS",
    "BFL_IMAGE_LIMIT",
    "REPLICATE_DATA_URI_LIMIT",
    "REPLICATE_IMAGE_FIELDS",
    "ImageFile",
    "InputError",
    "check_image",
    "check_params",
    "encode_image",
    "image_fields",
    "read_image",
    "resolve_params",
    "sniff",
]

MB = 1_000_000
#: Per image file, BFL shapes (sourced: BFL's docs, "≤20 MB"; README.md, "Local images").
BFL_IMAGE_LIMIT = 20 * MB
#: All images of one BFL request together (not sourced: our guard against absurd bodies).
BFL_BODY_LIMIT = 40 * MB
#: Per image file, Replicate shapes (sourced as a recommendation: "less than 1MB").
REPLICATE_DATA_URI_LIMIT = 1 * MB

#: Request fields that take an image, per body shape (submitter.bodies Shape.name).
BFL_IMAGE_FIELDS = frozenset(
    {"input_image", "image", "mask", "control_image", "image_prompt", *(f"input_image_{i}" for i in range(2, 9))}
)
REPLICATE_IMAGE_FIELDS = frozenset({"image", "input_image", "mask", "control_image", "image_prompt"})

_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_HEAD = 16  # bytes `sniff` needs for the four types
_CHUNK = 1 << 16  # reads past the size fstat gave (a file that grew, a /proc file) go this much at a time
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


class InputError(ValueError):
    """A request input that cannot be sent; the message names the field and the file."""


@dataclass(frozen=True)
class ImageFile:
    """What validation learns of an image file without keeping its bytes."""

    path: Path
    size: int
    kind: str


def sniff(head: bytes) -> str | None:
    """The image type the first bytes show, of those providers take as inputs (PNG, JPEG, WebP,
    GIF), or None: the downloads' own sniffing, narrowed (it also knows AVIF results)."""
    kind = sniff_image(head)
    return kind if kind in _TYPES else None


def image_fields(shape: str) -> frozenset[str]:
    return REPLICATE_IMAGE_FIELDS if shape == "replicate" else BFL_IMAGE_FIELDS


def _limit(shape: str) -> int:
    return REPLICATE_DATA_URI_LIMIT if shape == "replicate" else BFL_IMAGE_LIMIT


def _mb(n: float) -> str:
    return f"{n / MB:.1f}".removesuffix(".0") + " MB" if n >= MB // 10 else f"{n:.0f} bytes"


def _file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file that can be read as an image")


def _too_big(field: str, where: Path, shape: str, size: int | None) -> InputError:
    limit = _limit(shape)
    hint = (" (Replicate recommends data URIs only under 1 MB: host the file and pass its https URL)"
            if shape == "replicate" else " (BFL takes images up to 20 MB: resize it, or pass an https URL)")
    if size is None:  # its fstat size was under the limit (a file still growing, a /proc file), its bytes not
        return InputError(f"{field}: {str(where)!r} is over the {_mb(limit)} limit (more than {limit} bytes "
                          f"read){hint}")
    return InputError(f"{field}: {str(where)!r} is {_mb(size)}, over the {_mb(limit)} limit{hint}")


def _not_regular(field: str, where: Path, mode: int) -> InputError:
    return InputError(f"{field}: {str(where)!r} is not a regular file ({_file_kind(mode)}); "
                      "name a PNG, JPEG, WebP or GIF file")


@contextlib.contextmanager
def _opened(where: Path, field: str) -> Iterator[tuple[int, os.stat_result]]:
    """The file open for reading and its fstat; InputError unless it is a regular file."""
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"{field}: no such file {str(where)!r}") from None
    except OSError as exc:
        with contextlib.suppress(OSError):  # a socket cannot be opened at all (ENXIO): say what it is
            mode = os.stat(where).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(field, where, mode) from None
        raise InputError(f"{field}: cannot read {str(where)!r}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(field, where, info.st_mode)
        yield fd, info
    except OSError as exc:
        raise InputError(f"{field}: cannot read {str(where)!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _read_at_most(fd: int, size: int, limit: int) -> bytes:
    """The file's bytes, but no more than limit + 1: one read of its fstat size (+1, to see it end),
    then small reads only if it goes on."""
    chunks: list[bytes] = []
    total, ask = 0, min(size, limit) + 1
    while total <= limit:
        chunk = os.read(fd, min(ask, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        ask = _CHUNK
    return b"".join(chunks)


def _not_an_image(field: str, where: Path) -> InputError:
    return InputError(f"{field}: {str(where)!r} is not a PNG, JPEG, WebP or GIF image (by its first bytes)")


def check_image(path: str | os.PathLike[str], *, field: str, shape: str) -> ImageFile:
    """The file's size and image type, from its type, size and first bytes only (nothing else is
    read or kept); InputError as :func:`read_image`."""
    where = Path(path)
    with _opened(where, field) as (fd, info):
        if info.st_size > _limit(shape):
            raise _too_big(field, where, shape, info.st_size)
        kind = sniff(os.read(fd, _HEAD))
    if kind is None:
        raise _not_an_image(field, where)
    return ImageFile(where, info.st_size, kind)


def read_image(path: str | os.PathLike[str], *, field: str, shape: str) -> tuple[bytes, str]:
    """The file's bytes and image type; InputError if it is missing, unreadable, not a regular
    file, not an image or over the provider's limit (never reading more than the limit + 1 byte)."""
    where = Path(path)
    limit = _limit(shape)
    with _opened(where, field) as (fd, info):
        if info.st_size > limit:
            raise _too_big(field, where, shape, info.st_size)
        data = _read_at_most(fd, info.st_size, limit)
    if len(data) > limit:
        raise _too_big(field, where, shape, None)
    kind = sniff(data[:_HEAD])
    if kind is None:
        raise _not_an_image(field, where)
    return data, kind


def encode_image(data: bytes, kind: str, *, shape: str) -> str:
    """How the provider takes an inline image: raw base64 (BFL shapes) or a data: URI (Replicate)."""
    encoded = base64.b64encode(data).decode("ascii")
    return f"data:{kind};base64,{encoded}" if shape == "replicate" else encoded


def _images(
    params: Mapping[str, Any], shape: str, base_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, Any], dict[str, Path]]:
    """(`params` with `@@` unescaped and `@path` values left out, {image field: its file})."""
    fields = image_fields(shape)
    values: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for key, value in params.items():
        if not isinstance(value, str) or not value.startswith("@"):
            values[key] = value
        elif value.startswith("@@"):
            values[key] = value[1:]
        elif key not in fields:
            raise InputError(f"{key}: takes no image for {shape} providers (image fields: "
                             f"{', '.join(sorted(fields))}); write @@ for a literal @")
        else:
            path = Path(value[1:]).expanduser()
            files[key] = Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path
    return values, files


def _check_total(key: str, total: int, shape: str) -> None:
    if shape != "replicate" and total > BFL_BODY_LIMIT:
        raise InputError(f"{key}: the images of this request add up to {_mb(total)}, over "
                         f"{_mb(BFL_BODY_LIMIT)} (fluxhook's own guard; BFL documents 20 MB per image)")


def check_params(
    params: Mapping[str, Any], *, shape: str, base_dir: str | os.PathLike[str] | None = None
) -> dict[str, ImageFile]:
    """Everything :func:`resolve_params` would refuse, refused, without reading the images: each
    `@path` file checked by type, size and first bytes. Returns {image field: what was learnt}."""
    _, files = _images(params, shape, base_dir)
    found: dict[str, ImageFile] = {}
    total = 0
    for key, path in files.items():
        found[key] = check_image(path, field=key, shape=shape)
        total += found[key].size
        _check_total(key, total, shape)
    return found


def resolve_params(
    params: Mapping[str, Any], *, shape: str, base_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """`params` with every `"@path"` value of an image field replaced by the encoded file.

    Relative paths are relative to `base_dir` (a batch file's folder) when given. `"@@x"` is
    the literal `"@x"`. An `"@path"` value in a field that takes no image is an InputError
    (a typo in the field name would otherwise send the path as text)."""
    values, files = _images(params, shape, base_dir)
    encoded: dict[str, str] = {}
    total = 0
    for key, path in files.items():
        data, kind = read_image(path, field=key, shape=shape)
        total += len(data)
        _check_total(key, total, shape)
        encoded[key] = encode_image(data, kind, shape=shape)
    return {key: encoded[key] if key in encoded else values[key] for key in params}

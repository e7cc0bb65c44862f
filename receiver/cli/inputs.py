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
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from submitter.media import sniff_image

__all__ = [
    "BFL_BODY_LIMIT",
    "BFL_IMAGE_FIELDS",
    "BFL_IMAGE_LIMIT",
    "REPLICATE_DATA_URI_LIMIT",
    "REPLICATE_IMAGE_FIELDS",
    "InputError",
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


class InputError(ValueError):
    """A request input that cannot be sent; the message names the field and the file."""


def sniff(head: bytes) -> str | None:
    """The image type the first bytes show, of those providers take as inputs (PNG, JPEG, WebP,
    GIF), or None: the downloads' own sniffing, narrowed (it also knows AVIF results)."""
    kind = sniff_image(head)
    return kind if kind in _TYPES else None


def image_fields(shape: str) -> frozenset[str]:
    return REPLICATE_IMAGE_FIELDS if shape == "replicate" else BFL_IMAGE_FIELDS


def _limit(shape: str) -> int:
    return REPLICATE_DATA_URI_LIMIT if shape == "replicate" else BFL_IMAGE_LIMIT


def read_image(path: str | os.PathLike[str], *, field: str, shape: str) -> tuple[bytes, str]:
    """The file's bytes and image type; InputError if it is missing, unreadable, not an image
    or over the provider's limit."""
    where = Path(path)
    try:
        size = where.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{field}: no such file {str(where)!r}") from None
    except OSError as exc:
        raise InputError(f"{field}: cannot read {str(where)!r}: {exc.strerror or exc}") from None
    if where.is_dir():
        raise InputError(f"{field}: {str(where)!r} is a directory, not an image file")
    limit = _limit(shape)
    if size > limit:
        hint = (" (Replicate recommends data URIs only under 1 MB: host the file and pass its https URL)"
                if shape == "replicate" else " (BFL takes images up to 20 MB: resize it, or pass an https URL)")
        raise InputError(f"{field}: {str(where)!r} is {size / MB:.1f} MB, over the {limit / MB:.0f} MB limit{hint}")
    try:
        data = where.read_bytes()
    except OSError as exc:
        raise InputError(f"{field}: cannot read {str(where)!r}: {exc.strerror or exc}") from None
    kind = sniff(data[:16])
    if kind is None:
        raise InputError(f"{field}: {str(where)!r} is not a PNG, JPEG, WebP or GIF image (by its first bytes)")
    return data, kind


def encode_image(data: bytes, kind: str, *, shape: str) -> str:
    """How the provider takes an inline image: raw base64 (BFL shapes) or a data: URI (Replicate)."""
    encoded = base64.b64encode(data).decode("ascii")
    return f"data:{kind};base64,{encoded}" if shape == "replicate" else encoded


def resolve_params(
    params: Mapping[str, Any], *, shape: str, base_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """`params` with every `"@path"` value of an image field replaced by the encoded file.

    Relative paths are relative to `base_dir` (a batch file's folder) when given. `"@@x"` is
    the literal `"@x"`. An `"@path"` value in a field that takes no image is an InputError
    (a typo in the field name would otherwise send the path as text)."""
    fields = image_fields(shape)
    out: dict[str, Any] = {}
    total = 0
    for key, value in params.items():
        if not isinstance(value, str) or not value.startswith("@"):
            out[key] = value
            continue
        if value.startswith("@@"):
            out[key] = value[1:]
            continue
        if key not in fields:
            raise InputError(f"{key}: takes no image for {shape} providers (image fields: "
                             f"{', '.join(sorted(fields))}); write @@ for a literal @")
        path = Path(value[1:]).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        data, kind = read_image(path, field=key, shape=shape)
        total += len(data)
        if shape != "replicate" and total > BFL_BODY_LIMIT:
            raise InputError(f"{key}: the images of this request add up to {total / MB:.1f} MB, over "
                             f"{BFL_BODY_LIMIT / MB:.0f} MB (fluxhook's own guard; BFL documents 20 MB per image)")
        out[key] = encode_image(data, kind, shape=shape)
    return out

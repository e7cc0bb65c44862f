"""Large request inputs kept out of the job's row: each string value of `params` over :data:`INLINE_LIMIT`
bytes (typically an inline image: raw base64 or a `data:` URI) is stored once, by sha256, in the `inputs`
table; the job's params hold a small reference in its place, and the `job_inputs` table names which values
are references (a params value that merely looks like one is left alone).

Pure functions: what to take out (:func:`split_params`), whether a job's params may hold references
(:func:`has_references`), and putting the values back (:func:`put_back`) for the submit request, which
is sent exactly as it would have been with the values inline. The prompt stays inline (views show it,
listings read its first characters in SQL).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from submitter.media import sniff_image

__all__ = [
    "INLINE_LIMIT", "REFERENCE_KEYS", "LargeInput", "has_large", "has_references", "media_type", "put_back",
    "references", "split_params",
]

#: String values longer than this (UTF-8 bytes) leave the job's row.
INLINE_LIMIT = 16 * 1024
#: The keys of a reference, as the job's params (and so every view of them) show it.
REFERENCE_KEYS = frozenset({"sha256", "size", "type"})
#: A top-level key that always stays inline, whatever its size.
INLINE_KEYS = frozenset({"prompt"})
_DATA_URI = re.compile(r"data:([A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64})[;,]")


@dataclass(frozen=True)
class LargeInput:
    """One value taken out of a job's params: where it was (`path`: its keys and list indexes from the top)
    and what stands there now."""

    path: tuple[str | int, ...]
    sha256: str
    size: int
    type: str
    #: The value as the `inputs` table keeps it: the string's JSON encoding (any string round-trips).
    data: str = field(repr=False)

    @property
    def reference(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "type": self.type}

    @property
    def path_json(self) -> str:
        return json.dumps(self.path, separators=(",", ":"))


def media_type(value: str) -> str:
    """What a large string holds: a data: URI's declared type, else an image type its base64 decodes
    to (by the first bytes), else text/plain."""
    declared = _DATA_URI.match(value)
    if declared:
        return declared.group(1).lower()
    try:
        head = base64.b64decode(value[:32], validate=True)
    except (binascii.Error, ValueError):
        return "text/plain"
    return sniff_image(head) or "text/plain"


def _large(path: tuple[str | int, ...], value: str) -> LargeInput:
    raw = value.encode("utf-8", "surrogatepass")
    return LargeInput(path=path, sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), type=media_type(value),
                      data=json.dumps(value))


def _is_large(value: str) -> bool:
    # A string of n characters is at most 4n bytes: only a long one needs encoding to know.
    return 4 * len(value) > INLINE_LIMIT and len(value.encode("utf-8", "surrogatepass")) > INLINE_LIMIT


def has_large(params: dict[str, Any]) -> bool:
    """Whether :func:`split_params` would take anything out of `params` (without hashing it)."""

    def walk(value: Any, top: bool) -> bool:
        if isinstance(value, str):
            return _is_large(value)
        if isinstance(value, dict):
            return any(walk(v, False) for k, v in value.items() if not (top and k in INLINE_KEYS))
        if isinstance(value, list):
            return any(walk(v, False) for v in value)
        return False

    return walk(params, True)


def _walk(value: Any, path: tuple[str | int, ...], found: list[LargeInput]) -> Any:
    if isinstance(value, str):
        if _is_large(value):
            item = _large(path, value)
            found.append(item)
            return item.reference
        return value
    if isinstance(value, dict):
        return {k: v if not path and k in INLINE_KEYS else _walk(v, (*path, k), found) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*path, i), found) for i, v in enumerate(value)]
    return value


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], list[LargeInput]]:
    """`params` with every large string replaced by its reference, and the values taken out (none: the
    same dict)."""
    found: list[LargeInput] = []
    small = _walk(params, (), found)
    return (small, found) if found else (params, [])


def has_references(value: Any) -> bool:
    """Whether `value` holds anything shaped like a reference (only those need looking up)."""
    if isinstance(value, dict):
        return value.keys() == REFERENCE_KEYS or any(has_references(v) for v in value.values())
    if isinstance(value, list):
        return any(has_references(v) for v in value)
    return False


def references(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """Every reference-shaped value in `value`, with its path (what a view lists as the job's large inputs)."""
    if isinstance(value, dict):
        if value.keys() == REFERENCE_KEYS:
            return [(path, value)]
        return [found for k, v in value.items() for found in references(v, (*path, k))]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in references(v, (*path, i))]
    return []


def put_back(params: dict[str, Any], values: list[tuple[str, str]]) -> dict[str, Any]:
    """`params` (as the row keeps them) with each (path as JSON, value as JSON) put back where it was."""
    if not values:
        return params
    full = copy.deepcopy(params)
    for path_json, data in values:
        *parents, last = json.loads(path_json)
        holder: Any = full
        for key in parents:
            holder = holder[key]
        holder[last] = json.loads(data)
    return full

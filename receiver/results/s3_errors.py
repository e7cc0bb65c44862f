"""What an object store's failure means, as a :class:`~receiver.results.contract.StorageError` that says which
bucket, what failed and which setting to check: S3 answers errors in XML (`<Code>NoSuchBucket</Code>`), which
obstore quotes inside a long message (the request, its retries, a debug dump); only the code and S3's one-line
message are kept."""

from __future__ import annotations

import re

from receiver.results.contract import MISSING_BUCKET, StorageError

__all__ = ["storage_error"]

_CODE = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{1,200})</Message>")


def storage_error(exc: BaseException | None, action: str, bucket: str, url: str) -> StorageError:
    """`exc` (obstore's, or a CopyObject answer's) while doing `action` in `bucket` (FLUXHOOK_RESULTS=`url`).
    Its kind is S3's error code (`NoSuchBucket`, `AccessDenied`, ...) or else the exception's type."""
    text = str(exc or "").strip()
    code = _CODE.search(text)
    kind = code.group(1) if code else type(exc).__name__ if exc else "UnknownError"
    if kind == MISSING_BUCKET:
        return StorageError(f"bucket {bucket!r} does not exist ({action}): create it or fix FLUXHOOK_RESULTS"
                            f" ({url})", kind)
    said = _MESSAGE.search(text)
    detail = f"{kind}: {said.group(1)}" if said else _brief(exc) if exc else kind
    return StorageError(f"{action} in {url} failed ({detail}): check FLUXHOOK_RESULTS and the store's credentials",
                        kind)


def _brief(exc: BaseException) -> str:
    """The exception's type and first line (obstore's messages name the request, never a secret)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__

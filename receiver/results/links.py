"""Signed, expiring links to stored result files, for event consumers that hold no API key.

A link is ``{FLUXHOOK_PUBLIC_URL}/files/{job_id}/{n}?expires={unix seconds}&sig={signature}``; the
signature is HMAC-SHA256 of ``{job_id}/{n}/{expires}`` under a key derived from FLUXHOOK_SECRET_KEY
for this purpose only (so a link's signature says nothing of the key, nor of the callbacks' secrets).
:func:`sign` and :func:`verify` are pure: the route (receiver/web/links.py) checks what the relay signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

__all__ = ["LINK_PURPOSE", "link_key", "link_url", "sign", "verify"]

#: What the link key is derived for (domain separation from every other use of the master key).
LINK_PURPOSE = b"fluxhook/v1/file-link"


def link_key(master: bytes) -> bytes:
    """The key links are signed with: HMAC-SHA256(master, LINK_PURPOSE)."""
    return hmac.new(master, LINK_PURPOSE, hashlib.sha256).digest()


def sign(key: bytes, job_id: str, n: int, expires: int) -> str:
    """The signature of a link to file `n` of `job_id` valid until `expires` (unix seconds): URL-safe
    base64 of HMAC-SHA256 under `key` (:func:`link_key`), without padding."""
    message = f"{job_id}/{int(n)}/{int(expires)}".encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(key: bytes, job_id: str, n: int, expires: int, sig: str, now: float) -> str | None:
    """None when `sig` is :func:`sign`'s for these values and `expires` has not passed at `now`;
    else why not ("expired" or "bad signature"), fit for the answer (it holds nothing secret)."""
    expected = sign(key, job_id, n, expires)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogatepass")):
        return "bad signature"
    if now >= expires:
        return "expired"
    return None


def link_url(public_url: str, key: bytes, job_id: str, n: int, expires: int) -> str:
    """The absolute link to file `n` of `job_id`, valid until `expires`."""
    sig = sign(key, job_id, n, expires)
    return f"{public_url.rstrip('/')}/files/{quote(job_id, safe='')}/{int(n)}?expires={int(expires)}&sig={sig}"

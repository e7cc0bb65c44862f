"""AWS Signature Version 4 for the one request obstore does not make for us: a server-side
CopyObject with new metadata (receiver/results/s3.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from urllib.parse import urlsplit

__all__ = ["EMPTY_SHA256", "sigv4", "static_credentials"]

#: The sha256 of an empty payload, as SigV4 signs a request without a body.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def static_credentials() -> tuple[str, str, str | None] | None:
    """Access key, secret and session token from the standard AWS_* variables, or None."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return (key, secret, os.environ.get("AWS_SESSION_TOKEN") or None) if key and secret else None


def sigv4(method: str, url: str, headers: dict[str, str], region: str, access_key: str, secret_key: str,
          token: str | None = None, *, now: dt.datetime | None = None, payload: str = "UNSIGNED-PAYLOAD",
          service: str = "s3") -> dict[str, str]:
    """`headers` plus the SigV4 `Authorization` (and date, payload hash, session token) for a
    request without a query string."""
    parts = urlsplit(url)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    out = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    out |= {"host": parts.netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload}
    if token:
        out["x-amz-security-token"] = token
    names = sorted(out)
    canonical = "\n".join([
        method, parts.path or "/", parts.query, "".join(f"{k}:{out[k]}\n" for k in names), ";".join(names), payload,
    ])
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (stamp[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, "
                            f"Signature={signature}")
    return out

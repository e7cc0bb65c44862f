"""Callback authentication: per-job keys, and the signature schemes providers use.

Everything here is a pure function over raw bytes and plain strings, so the
receiver, the simulator and the tests share one implementation. Every malformed
input raises :class:`VerificationError`, never anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "JobKeys",
    "VerificationError",
    "derive_job_keys",
    "sign_bfl",
    "sign_standard",
    "verify_bfl",
    "verify_standard",
    "verify_token",
]

BFL_SIGNATURE_HEADER = "x-bfl-signature"
SECRET_ECHO_HEADER = "x-webhook-secret"


class VerificationError(Exception):
    """A callback failed authentication. The message never contains a secret."""


@dataclass(frozen=True)
class JobKeys:
    """The per-job values derived from the master key; never stored."""

    token: str  # goes into the callback URL path
    webhook_secret: str  # handed to the provider as `webhook_secret`

    def __repr__(self) -> str:
        return "JobKeys(token='**********', webhook_secret='**********')"


@lru_cache(maxsize=4096)
def derive_job_keys(master: bytes, provider: str, job_id: str) -> JobKeys:
    """Derive the path token and webhook secret of one job (one HKDF-SHA256 expansion, split).

    Pure, so cached (bounded): a callback's check and the redaction of what it stores share one
    derivation.

    Both depend on the provider too, so a callback sent to another provider's
    path does not authenticate.
    """
    from cryptography.hazmat.primitives import hashes  # loaded by the first derivation, not at start-up
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = f"job-keys:{provider}:{job_id}".encode("utf-8", "surrogatepass")
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=b"fluxhook/v1", info=info).derive(master)
    token = base64.urlsafe_b64encode(material[:32]).rstrip(b"=")
    return JobKeys(token=token.decode(), webhook_secret=material[32:].hex())


def verify_token(expected: str, given: str) -> None:
    """Constant-time check of the callback URL's path token."""
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass")):
        raise VerificationError("callback token does not match")


# -- BFL-shaped callbacks ----------------------------------------------------------


def sign_bfl(secret: str, body: bytes) -> str:
    """`X-BFL-Signature` value: `sha256=<hex HMAC-SHA256(secret, raw body)>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_bfl(body: bytes, headers: Mapping[str, str], secret: str) -> str:
    """Check whichever BFL scheme the sender used; return the scheme's name.

    BFL's signing is not documented consistently (README.md, "Callback authentication"), so both
    known schemes are accepted when present and a present-but-wrong one fails.
    With neither header, the path token alone authenticates: returns "token".
    """
    scheme = "token"
    signature = headers.get(BFL_SIGNATURE_HEADER)
    if signature is not None:
        given = signature.strip()
        if given.lower().startswith("sha256="):
            given = given[len("sha256=") :]
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), given.lower().encode("utf-8", "surrogatepass")):
            raise VerificationError("X-BFL-Signature does not match the body")
        scheme = "hmac-sha256"
    echoed = headers.get(SECRET_ECHO_HEADER)
    if echoed is not None:
        if not hmac.compare_digest(secret.encode(), echoed.strip().encode("utf-8", "surrogatepass")):
            raise VerificationError("X-Webhook-Secret does not match")
        if scheme == "token":
            scheme = "secret-header"
    return scheme


# -- Standard Webhooks v1 (Replicate) -------------------------------------------------


def _standard_key(secret: str) -> bytes:
    raw = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError("webhook secret is not valid base64") from exc


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature` value for one secret: `v1,<base64 HMAC>`."""
    mac = hmac.new(_standard_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify_standard(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: float,
    tolerance: float = 300.0,
) -> str:
    """Verify a Standard Webhooks v1 message; return its `webhook-id`.

    Any of `secrets` may match any of the space-separated `v1,` signatures
    (rotation). The timestamp must be an integer within `tolerance` of `now`.
    """
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    header = headers.get("webhook-signature")
    if not msg_id or not stamp or not header:
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise VerificationError("webhook-timestamp is not an integer number of seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        raise VerificationError("webhook-timestamp is outside the tolerance window")
    given: list[bytes] = []
    for part in header.split(" "):
        version, sep, value = part.partition(",")
        if not sep or version != "v1":
            continue
        try:
            given.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not given:
        raise VerificationError("webhook-signature holds no well-formed v1 signature")
    signed = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
    keys = []
    for secret in secrets:
        try:
            keys.append(_standard_key(secret))
        except VerificationError:
            continue  # one unusable secret must not hide the others
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        if any(hmac.compare_digest(expected, g) for g in given):
            return msg_id
    raise VerificationError("no webhook-signature matches")

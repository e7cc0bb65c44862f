from __future__ import annotations

import json
from pathlib import Path

import pytest

from submitter.signing import (
    VerificationError,
    derive_job_keys,
    sign_bfl,
    sign_standard,
    verify_bfl,
    verify_standard,
    verify_token,
)

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "signatures.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["standard_webhooks_v1"], ids=lambda v: v["name"])
def test_standard_webhooks_vectors(vector: dict[str, str]) -> None:
    headers = {
        "webhook-id": vector["id"],
        "webhook-timestamp": vector["timestamp"],
        "webhook-signature": vector["webhook-signature"],
    }
    body = vector["body"].encode()
    now = float(vector["timestamp"])
    if vector["valid"]:
        assert verify_standard(body, headers, [vector["secret"]], now=now) == vector["id"]
    else:
        with pytest.raises(VerificationError):
            verify_standard(body, headers, [vector["secret"]], now=now)


def test_standard_sign_matches_the_known_answer() -> None:
    v = VECTORS["standard_webhooks_v1"][0]
    assert sign_standard(v["secret"], v["id"], int(v["timestamp"]), v["body"].encode()) == v["webhook-signature"]


def test_standard_rotation_and_tolerance() -> None:
    v = VECTORS["standard_webhooks_v1"][0]
    headers = {"webhook-id": v["id"], "webhook-timestamp": v["timestamp"], "webhook-signature": v["webhook-signature"]}
    body, ts = v["body"].encode(), float(v["timestamp"])
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    assert verify_standard(body, headers, [other, v["secret"]], now=ts) == v["id"]
    with pytest.raises(VerificationError):
        verify_standard(body, headers, [other], now=ts)
    assert verify_standard(body, headers, [v["secret"]], now=ts + 300)
    for skew in (301, -301):
        with pytest.raises(VerificationError, match="tolerance"):
            verify_standard(body, headers, [v["secret"]], now=ts + skew)


@pytest.mark.parametrize("vector", VECTORS["bfl_hmac_sha256_hex"], ids=lambda v: v["name"])
def test_bfl_vectors(vector: dict[str, str]) -> None:
    body = vector["body"].encode()
    headers = {"x-bfl-signature": vector["X-BFL-Signature"]}
    if vector["valid"]:
        assert sign_bfl(vector["secret"], body) == vector["X-BFL-Signature"]
        assert verify_bfl(body, headers, vector["secret"]) == "hmac-sha256"
    else:
        with pytest.raises(VerificationError):
            verify_bfl(body, headers, vector["secret"])


def test_bfl_schemes() -> None:
    body = b'{"id":"x","status":"Ready"}'
    assert verify_bfl(body, {}, "s") == "token"
    assert verify_bfl(body, {"x-webhook-secret": "s"}, "s") == "secret-header"
    # A bare hex digest (no "sha256=" prefix) is accepted too; uppercase hex as well.
    bare = sign_bfl("s", body).removeprefix("sha256=")
    assert verify_bfl(body, {"x-bfl-signature": bare.upper()}, "s") == "hmac-sha256"
    with pytest.raises(VerificationError):
        verify_bfl(body, {"x-webhook-secret": "wrong"}, "s")
    with pytest.raises(VerificationError):
        verify_bfl(body + b" ", {"x-bfl-signature": sign_bfl("s", body)}, "s")
    # Both present: both must match.
    with pytest.raises(VerificationError):
        verify_bfl(body, {"x-bfl-signature": sign_bfl("s", body), "x-webhook-secret": "wrong"}, "s")


GARBAGE = [
    "", " ", "sha256=", "sha256=zz", "v1,", "\x00", "é", "sha256=" + "0" * 64, "\udcff", "a" * 10_000,
]


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_only_ever_raises_verification_error(value: str) -> None:
    body = b"\xff\xfe not utf-8"
    for headers in ({"x-bfl-signature": value}, {"x-webhook-secret": value}):
        with pytest.raises(VerificationError):
            verify_bfl(body, headers, "secret")
    for headers in (
        {"webhook-id": value, "webhook-timestamp": "1614265330", "webhook-signature": "v1,AAAA"},
        {"webhook-id": "m", "webhook-timestamp": value, "webhook-signature": "v1,AAAA"},
        {"webhook-id": "m", "webhook-timestamp": "1614265330", "webhook-signature": value},
        {"webhook-id": "m", "webhook-timestamp": "1614265330.5", "webhook-signature": "v1,AAAA"},
        {"webhook-id": "m", "webhook-timestamp": "9" * 40, "webhook-signature": "v1,AAAA"},
    ):
        with pytest.raises(VerificationError):
            verify_standard(body, headers, ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], now=1614265330)
    with pytest.raises(VerificationError):
        verify_token("expected-token", value)


def test_job_keys_are_deterministic_and_distinct() -> None:
    a = derive_job_keys(b"k" * 32, "bfl", "job1")
    assert a == derive_job_keys(b"k" * 32, "bfl", "job1")
    others = [
        derive_job_keys(b"k" * 32, "bfl", "job2"),
        derive_job_keys(b"k" * 32, "deerapi", "job1"),
        derive_job_keys(b"j" * 32, "bfl", "job1"),
    ]
    for other in others:
        assert other.token != a.token and other.webhook_secret != a.webhook_secret
    assert a.token != a.webhook_secret
    assert a.token not in repr(a) and a.webhook_secret not in repr(a)
    verify_token(a.token, a.token)
    with pytest.raises(VerificationError):
        verify_token(a.token, others[0].token)


def test_standardwebhooks_package_signatures_verify_here() -> None:
    """A second implementation (the reference `standardwebhooks` package) signs; we verify."""
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    for i, body in enumerate(['{"id":"p","status":"succeeded"}', '{"a": "é ✓"}', "{}"]):
        ts = 1_800_000_000 + i
        signature = Webhook(secret).sign(f"msg_{i}", datetime.fromtimestamp(ts, tz=UTC), body)
        headers = {"webhook-id": f"msg_{i}", "webhook-timestamp": str(ts), "webhook-signature": signature}
        assert verify_standard(body.encode(), headers, [secret], now=ts) == f"msg_{i}"
        assert sign_standard(secret, f"msg_{i}", ts, body.encode()) == signature

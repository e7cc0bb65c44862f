"""Signed file links (receiver/results/links.py): known answers, and what verify refuses. Pure: no I/O, no clock."""

from __future__ import annotations

import pytest

from receiver.results.links import link_key, link_url, sign, verify

MASTER = b"k" * 32
#: Computed independently: `printf fluxhook/v1/file-link | openssl dgst -sha256 -hmac kkkk...(32)`.
KEY_HEX = "c2c22d63f2fc7a3f6883de869b47ae8d52b0368037c7f6a7eef1616a59b238cc"
#: `printf job_abc/0/1700000000 | openssl dgst -sha256 -mac HMAC -macopt hexkey:$KEY_HEX -binary | base64url`.
SIG = "BerTnMzz3dCvBhKIPAyvxN4uZFJUTtV-qZK9mW4a5_U"


def test_the_key_and_signature_match_known_answers() -> None:
    assert link_key(MASTER).hex() == KEY_HEX
    assert sign(link_key(MASTER), "job_abc", 0, 1_700_000_000) == SIG
    assert link_url("https://hooks.example/", link_key(MASTER), "job_abc", 0, 1_700_000_000) == (
        f"https://hooks.example/files/job_abc/0?expires=1700000000&sig={SIG}")


def test_verify_accepts_its_own_signature_until_it_expires() -> None:
    key = link_key(MASTER)
    assert verify(key, "job_abc", 0, 1_700_000_000, SIG, now=1_699_999_999.9) is None
    assert verify(key, "job_abc", 0, 1_700_000_000, SIG, now=1_700_000_000) == "expired"


@pytest.mark.parametrize("job_id, n, expires, sig", [
    ("job_abd", 0, 1_700_000_000, SIG),  # another job
    ("job_abc", 1, 1_700_000_000, SIG),  # another file
    ("job_abc", 0, 1_800_000_000, SIG),  # a later expiry
    ("job_abc", 0, 1_700_000_000, SIG[:-1] + "V"),  # a changed signature
    ("job_abc", 0, 1_700_000_000, ""),
])
def test_verify_refuses_any_altered_link(job_id: str, n: int, expires: int, sig: str) -> None:
    assert verify(link_key(MASTER), job_id, n, expires, sig, now=0) == "bad signature"


def test_another_master_key_signs_differently_and_the_signature_is_not_the_key() -> None:
    assert sign(link_key(b"j" * 32), "job_abc", 0, 1_700_000_000) != SIG
    assert MASTER.decode() not in SIG and KEY_HEX not in SIG

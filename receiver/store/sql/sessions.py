"""Ended UI sessions: a logged-out session cookie, by digest, until it would have expired anyway.

A session cookie is signed, not stored (receiver/web/ui/sessions.py); logging out records the
cookie's SHA-256 here so every replica refuses it from then on. Rows outlive their use by at most
one logout: each logout first deletes the rows whose cookies have expired by themselves.
"""

from __future__ import annotations

from receiver.store.sql.plumbing import Op, Query

__all__ = ["end_session", "session_ended"]


def end_session(digest: str, expires_at: float, now: float) -> Op[None]:
    yield Query("DELETE FROM ended_sessions WHERE expires_at < ?", (now,))
    yield Query("INSERT INTO ended_sessions (digest, expires_at) VALUES (?, ?) ON CONFLICT (digest) DO NOTHING",
                (digest, expires_at))


def session_ended(digest: str) -> Op[bool]:
    row = yield Query("SELECT 1 FROM ended_sessions WHERE digest = ?", (digest,), "one")
    return row is not None

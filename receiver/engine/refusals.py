"""Saying on a job why its callbacks are refused, where the person waiting on it looks (`fluxhook
status`, `submit --wait`, the API's job view): a callback whose path token is not this job's was
almost always sent for a job submitted under another FLUXHOOK_SECRET_KEY (two shells, two keys).

Written once per job, and cheaply: a refused callback costs the receiver no store access otherwise,
so forged traffic must not buy one per request. :class:`NoteGate` lets through each job id once
(among the last `remember` seen) and at most `per_second` look-ups a second in all; the note is
written only on an unfinished job whose note is not that already. The note holds no secret.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from receiver.store import Store, StoreUnavailable
from submitter.status import TERMINAL

__all__ = ["MISMATCH_NOTE", "NoteGate", "note_token_mismatch"]

#: No "?" in it: shown text is scrubbed, and a "?" followed by text reads as a URL's query (a signature).
MISMATCH_NOTE = (
    "a callback was refused: its token does not match this job's (FLUXHOOK_SECRET_KEY was changed, "
    "or the sender and the receiver use different keys)"
)


#: Longest job id looked up (ours: "fh_" and 32 hex digits), so what the gate keeps stays small.
MAX_ID = 64


class NoteGate:
    """Which refused callbacks may look their job up: each job id once among the last `remember`,
    and at most `per_second` look-ups in any one-second window."""

    def __init__(self, clock: Callable[[], float], *, per_second: int = 20, remember: int = 4096) -> None:
        self.clock, self.per_second, self.remember = clock, per_second, remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._window, self._used = 0.0, 0

    def admit(self, job_id: str) -> bool:
        if len(job_id) > MAX_ID:
            return False  # no job has such an id (ours are 35 characters): nothing to look up or keep
        if job_id in self._seen:
            self._seen.move_to_end(job_id)
            return False
        now = self.clock()
        if now - self._window >= 1.0:
            self._window, self._used = now, 0
        if self._used >= self.per_second:
            return False
        self._used += 1
        self._seen[job_id] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        return True

    def forget(self, job_id: str) -> None:
        """Let the next refused callback for this job look it up again (this look-up failed)."""
        self._seen.pop(job_id, None)


async def note_token_mismatch(store: Store, gate: NoteGate, provider: str, job_id: str, *, now: float) -> bool:
    """Put :data:`MISMATCH_NOTE` on the job if the gate lets this look-up through and the job is
    `provider`'s (a callback on another provider's path is no key mismatch), unfinished and not so noted
    already; True if written. Best effort: a store that is down changes nothing (the callback is refused
    all the same)."""
    if not gate.admit(job_id):
        return False
    try:
        job = await store.get_job(job_id)
        if job is None or job.provider != provider or job.status in TERMINAL or job.note == MISMATCH_NOTE:
            return False
        await store.set_note(job_id, MISMATCH_NOTE, now=now)
    except StoreUnavailable:
        gate.forget(job_id)
        return False
    return True

"""A Replicate prediction for the simulator: its phases in time, its logs, what a create body must hold.

A prediction with runtime r is `starting` until r/3, `processing` until r (logs
grow; from 2r/3 a list output is partially there), then terminal: `succeeded`,
or as its `outcome` fault says. A cancel ends it at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from submitter.simulator.state import Job

__all__ = [
    "DEFAULT_EVENTS", "ERROR_OF_OUTCOME", "EVENTS", "OUTPUT", "PROCESSING", "STARTING", "TERMINAL", "Prediction",
    "canceled_within", "invalid", "iso", "logs", "new_message_id", "new_webhook_secret", "random_id", "wrong_secret",
]

API = "https://api.replicate.com/v1"
EVENTS = ("start", "output", "logs", "completed")
#: Without `webhook_events_filter`: "new outputs or the prediction has finished" (Replicate's docs).
DEFAULT_EVENTS = ("output", "completed")
STATUS_OF_OUTCOME = {
    "ready": "succeeded",
    "error": "failed",
    "request_moderated": "failed",
    "content_moderated": "failed",
    "canceled": "canceled",
    "aborted": "aborted",
}
ERROR_OF_OUTCOME = {
    "error": "simulated failure",
    "request_moderated": "NSFW content detected in the prompt. Try a different prompt.",
    "content_moderated": "NSFW content detected. Try running it again, or try a different prompt.",
}
# Phases of a prediction, in order.
STARTING, PROCESSING, OUTPUT, TERMINAL = range(4)



def new_webhook_secret() -> str:
    """A fresh signing secret shaped like Replicate's: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def random_id() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def new_message_id() -> str:
    return "msg_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


def wrong_secret(secret: str) -> str:
    return "whsec_" + base64.b64encode(hashlib.sha256(b"wrong" + secret.encode()).digest()).decode()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Prediction(Job):
    input: dict[str, Any] = field(default_factory=dict)
    proxy: bool = False
    events: tuple[str, ...] = DEFAULT_EVENTS
    data_lifetime: float = 3600.0
    stream_id: str = ""
    canceled_at: float | None = None
    cancels: int = 0
    events_sent: Counter[str] = field(default_factory=Counter)
    woken: asyncio.Event = field(default_factory=asyncio.Event)  # set by a cancel

    @property
    def is_list(self) -> bool:
        return self.faults.outputs > 1 or self.faults.output_list

    def running_phase(self, t: float) -> int:
        """The phase at sim time `t`, ignoring cancels and the end."""
        if self.faults.outcome == "aborted":
            return STARTING
        elapsed, runtime = t - self.accepted_at, self.faults.runtime
        return OUTPUT if elapsed >= runtime * 2 / 3 else PROCESSING if elapsed >= runtime / 3 else STARTING

    def phase_at(self, now: float) -> int:
        return TERMINAL if self.canceled_at is not None or now >= self.done_at else self.running_phase(now)

    @property
    def terminal_status(self) -> str:
        return "canceled" if self.canceled_at is not None else STATUS_OF_OUTCOME[self.faults.outcome]

    @property
    def completed_at(self) -> float:
        return self.canceled_at if self.canceled_at is not None else self.done_at

    def reached(self, phase: int) -> int:
        """The last running phase whose logs and output a snapshot of `phase` shows."""
        if phase != TERMINAL:
            return phase
        if self.canceled_at is not None:
            return self.running_phase(self.canceled_at)
        return STARTING if self.faults.outcome == "aborted" else OUTPUT

    def status(self, phase: int) -> str:
        return self.terminal_status if phase == TERMINAL else "starting" if phase == STARTING else "processing"

    def removed(self, now: float) -> bool:
        return self.phase_at(now) == TERMINAL and now >= self.completed_at + self.data_lifetime

    def filename(self, index: int) -> str:
        return f"out-{index}.{self.faults.image_format}"

    def files(self, now: float) -> dict[str, str]:
        if self.removed(now):
            return {}
        return {self.filename(i): f"{self.id}/out-{i}" for i in range(self.faults.outputs)}

    def stats(self, now: float) -> dict[str, Any]:
        return super().stats(now) | {
            "kind": "replicate",
            "status": self.status(self.phase_at(now)),
            "events_sent": {event: self.events_sent[event] for event in EVENTS},
            "cancels": self.cancels,
        }


async def canceled_within(p: Prediction, seconds: float) -> bool:
    """Sleep up to `seconds`, waking early on a cancel; True if the prediction was canceled."""
    if seconds > 0 and not p.woken.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.woken.wait(), seconds)
    return p.woken.is_set()


def invalid(body: Any) -> str | None:
    """Why a create body is refused, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        return "input: Invalid type. Expected: object"
    if not isinstance(body.get("webhook"), (str, type(None))):
        return "webhook: Invalid type. Expected: string"
    events = body.get("webhook_events_filter")
    if events is not None and not (isinstance(events, list) and all(e in EVENTS for e in events)):
        return f"webhook_events_filter: must be a list drawn from {list(EVENTS)}"
    return None


def logs(p: Prediction, reached: int, status: str) -> str:
    if reached < PROCESSING:
        return ""
    seed = p.input.get("seed")
    lines = [f"Using seed: {seed if isinstance(seed, int) else 42}"]
    if reached >= OUTPUT:
        lines += ["step 1/4", "step 2/4"]
    if status == "succeeded":
        lines += ["step 3/4", "step 4/4", f"Generated {p.faults.outputs} image(s) in {p.faults.runtime:.2f}s"]
    elif status == "failed":
        lines.append(f"Error: {ERROR_OF_OUTCOME.get(p.faults.outcome)}")
    return "".join(line + "\n" for line in lines)

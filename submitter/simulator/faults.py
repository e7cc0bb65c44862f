"""What the simulated provider does wrong, per job: :class:`Faults`, chosen by rules matching the prompt."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["IMAGE_FORMATS", "OUTCOMES", "SIGNATURES", "Faults"]

OUTCOMES = {
    "ready": "Ready",
    "error": "Error",
    "request_moderated": "Request Moderated",
    "content_moderated": "Content Moderated",
    # Replicate-only outcomes; a BFL task with one of them ends in "Error".
    "canceled": "Error",
    "aborted": "Error",
}
SIGNATURES = ("hmac", "echo", "none")
IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class Faults:
    """How the simulated provider treats one job."""

    drop: bool = False  # send no callbacks at all
    duplicate: int = 1  # send the terminal callback this many times, concurrently
    delay: float = 0.0  # extra seconds between completion and the terminal callback
    reorder: bool = False  # follow the terminal callback with a stale "Pending" one
    bad_signature: bool = False  # sign callbacks with a wrong secret
    signature: str = "hmac"  # "hmac" (X-BFL-Signature), "echo" (X-Webhook-Secret), "none"
    progress: bool = False  # send a "processing" callback before the terminal one
    submit_errors: tuple[int, ...] = ()  # reject the rule's first submits with these statuses
    outcome: str = "ready"  # "ready", "error", "request_moderated", "content_moderated"
    webhook_shape: bool = False  # answer submits like webhook mode: no polling_url
    expired_url: bool = False  # the first signed URL handed out is already expired
    slow_download: float = 0.0  # bytes per second; 0 serves at full speed
    runtime: float = 0.05  # seconds from accept to done
    image_format: str = "png"  # "png" or "jpeg"
    image_size: int = 0  # pad the image file to at least this many bytes
    # Replicate only (BFL tasks ignore these):
    outputs: int = 1  # output files; `output` is a list of URLs when > 1
    output_list: bool = False  # with outputs == 1: a one-URL list (flux-schnell/dev) instead of a string
    drop_completed: bool = False  # send the start/intermediate webhooks but never `completed`

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}")
        if self.signature not in SIGNATURES:
            raise ValueError(f"signature must be one of {SIGNATURES}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}")
        if min(self.duplicate, self.outputs) < 1:
            raise ValueError("duplicate and outputs must be >= 1")
        if min(self.runtime, self.delay, self.slow_download, self.image_size) < 0:
            raise ValueError("durations, rates and sizes must be >= 0")
        if not all(isinstance(s, int) and 400 <= s <= 599 for s in self.submit_errors):
            raise ValueError("submit_errors must be HTTP error statuses")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faults:
        """Build from JSON values (lists for tuples), rejecting unknown or mistyped fields."""
        defaults = {f.name: f.default for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in defaults:
                raise ValueError(f"unknown fault {name!r}")
            default = defaults[name]
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(default, float) and type(value) is int:
                value = float(value)
            if type(value) is not type(default):
                raise ValueError(f"fault {name!r} must be a {type(default).__name__}")
            values[name] = value
        return cls(**values)

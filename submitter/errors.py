"""What can go wrong when talking to a provider.

    ProviderError
     ├── SubmitRejected      the provider refused the job (4xx): fail it, with the provider's message
     ├── ProviderUnavailable retries exhausted on 429/5xx or connection errors: nothing was created, try later
     ├── SubmitAmbiguous     the request may have reached the provider but no answer came back:
     │                       never resubmit blindly; wait for a callback or the deadline
     └── PollFailed          a status check failed; the next sweep tries again
"""

from __future__ import annotations

__all__ = ["PollFailed", "ProviderError", "ProviderUnavailable", "SubmitAmbiguous", "SubmitRejected"]


class ProviderError(Exception):
    """Base of every provider-side failure. Messages never hold credentials."""


class SubmitRejected(ProviderError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"provider rejected the job (HTTP {status_code}): {message}")
        self.status_code = status_code
        self.message = message


class ProviderUnavailable(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SubmitAmbiguous(ProviderError):
    """The submit request was sent but its outcome is unknown."""


class PollFailed(ProviderError):
    pass

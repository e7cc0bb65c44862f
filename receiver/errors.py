"""Receiver errors, each with the HTTP status it maps to in exactly one handler.

    ReceiverError (400)
     ├── BadPayload          400  body is not JSON / not a provider body
     ├── Unauthorized        401  token, signature or secret header does not match
     ├── NotFound            404  unknown provider or job
     ├── RequestTimeout      408  the body did not arrive in time
     ├── PayloadTooLarge     413  body over FLUXHOOK_MAX_BODY
     ├── Conflict            422  callback names a different provider task than the job's
     ├── Refused             422  well-formed, but beyond a cap (more result files than FLUXHOOK_MAX_OUTPUTS)
     └── Unavailable         503  the store cannot take the event now: the sender should retry
"""

from __future__ import annotations

__all__ = [
    "BadPayload", "Conflict", "NotFound", "PayloadTooLarge", "ReceiverError", "Refused", "RequestTimeout",
    "Unauthorized", "Unavailable",
]


class ReceiverError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadPayload(ReceiverError):
    status_code = 400


class Unauthorized(ReceiverError):
    status_code = 401


class NotFound(ReceiverError):
    status_code = 404


class RequestTimeout(ReceiverError):
    status_code = 408


class PayloadTooLarge(ReceiverError):
    status_code = 413


class Conflict(ReceiverError):
    status_code = 422


class Refused(ReceiverError):
    status_code = 422


class Unavailable(ReceiverError):
    status_code = 503

"""The one error of the /v1 API client: what the server said went wrong, or that it said nothing."""

from __future__ import annotations

__all__ = ["ApiError", "bad_response"]


class ApiError(Exception):
    """An error answer of the API (or none at all: `status` None, code `unreachable`).

    `message` is the server's words with the API key cut out, so it is safe to print or log.
    """

    def __init__(self, status: int | None, code: str, message: str, field: str | None = None) -> None:
        super().__init__(status, code, message, field)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        prefix = f"HTTP {self.status} " if self.status is not None else ""
        return f"{prefix}{self.code}: {self.message}{where}"


def bad_response(what: str, status: int | None = None) -> ApiError:
    """An answer the client cannot read (code `bad_response`)."""
    return ApiError(status, "bad_response", f"unexpected answer from the API: {what}")

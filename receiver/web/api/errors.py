"""Errors of the /v1 API in the contract's one shape: `{"error": {"code", "message", "field"?}}`.

The app's own handlers answer ReceiverError and StoreUnavailable in the callback format
(`{"error": "<text>"}`), so every /v1 endpoint is wrapped in :func:`api_endpoint`, which answers
its errors itself. Messages never carry a key or a secret: they name fields, not values.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from receiver.errors import BadPayload, PayloadTooLarge, ReceiverError, RequestTimeout
from receiver.store import StoreUnavailable
from receiver.web.streams import TooManyStreams

__all__ = ["ApiError", "api_endpoint", "error_body", "invalid", "not_found"]

log = logging.getLogger("fluxhook.api")

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.code, self.message, self.field), status_code=self.status,
                            headers=self.headers)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, dict[str, str]]:
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def invalid(field: str, message: str) -> ApiError:
    """422 `invalid` naming `field`."""
    return ApiError(422, "invalid", message, field=field)


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def _from_receiver_error(exc: ReceiverError) -> ApiError:
    if isinstance(exc, PayloadTooLarge):
        return ApiError(413, "too_large", exc.detail)
    if isinstance(exc, RequestTimeout):
        return ApiError(408, "timeout", exc.detail)
    if isinstance(exc, BadPayload):
        return ApiError(400, "bad_json", exc.detail)
    if exc.status_code == 503:
        return ApiError(503, "unavailable", exc.detail, headers={"retry-after": "5"})
    return ApiError(exc.status_code, "invalid", exc.detail)


def api_endpoint(handler: Handler) -> Handler:
    """Answer ApiError, the receiver's own errors, an unavailable store and one stream too many (429) in the
    contract's shape."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except TooManyStreams as exc:
            return ApiError(429, "too_many_streams", exc.message,
                            headers={"retry-after": str(exc.retry_after)}).response()
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            return ApiError(503, "unavailable", "store unavailable, retry later",
                            headers={"retry-after": "5"}).response()
        except ReceiverError as exc:
            return _from_receiver_error(exc).response()

    return endpoint

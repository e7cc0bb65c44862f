"""Request bodies and headers as the receiver reads and keeps them: a body read with a size cap and a
deadline (the callback and `POST /v1/jobs`), and headers with their credentials redacted (the audit log)."""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Receive

from receiver.errors import BadPayload, PayloadTooLarge, RequestTimeout

__all__ = ["HEADERS_CAP", "HEADER_VALUE_CAP", "SECRET_HEADERS", "read_body", "receive_body", "redact_headers"]

#: Headers that carry credentials: kept in the audit log only as "[redacted]".
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-key", "x-webhook-secret"})
#: What one audit event keeps of the request headers: each value, and all of them together.
HEADER_VALUE_CAP = 1024
HEADERS_CAP = 8 * 1024


def redact_headers(headers: Headers) -> dict[str, str]:
    """The headers as the audit log keeps them: credentials redacted, values and total size capped."""
    kept: dict[str, str] = {}
    size = 0
    items = headers.items()
    for n, (name, value) in enumerate(items):
        if name in SECRET_HEADERS:
            value = "[redacted]"
        elif len(value) > HEADER_VALUE_CAP:
            value = value[:HEADER_VALUE_CAP] + f"[... {len(value) - HEADER_VALUE_CAP} more characters not kept]"
        size += len(name) + len(value)
        if size > HEADERS_CAP:
            kept["[truncated]"] = f"{len(items) - n} more headers not kept"
            break
        kept[name] = value
    return kept


async def receive_body(receive: Receive, headers: Headers, limit: int, within: float) -> bytes:
    """The raw body from ASGI `receive`, refusing anything over `limit` without reading the rest."""
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
            raise BadPayload("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise BadPayload("client went away mid-body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body over the {limit} byte limit")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestTimeout("body not received in time") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, limit: int, within: float) -> bytes:
    """:func:`receive_body` for a Starlette request whose body has not been read."""
    return await receive_body(request.receive, request.headers, limit, within)

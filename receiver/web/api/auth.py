"""Bearer keys of the /v1 API (FLUXHOOK_API_KEYS), answered in the API's error shape.

No key configured: the API is off and answers 404. Otherwise the `Authorization: Bearer <key>`
header is matched against every configured key in constant time (receiver/web/auth.py), and a
miss is 401 with `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

from starlette.requests import Request

from receiver.web.api.errors import ApiError
from receiver.web.auth import api_keys, bearer_key, key_scope

__all__ = ["authenticate", "key_scope"]

OFF = "the API is off: set FLUXHOOK_API_KEYS"


def authenticate(request: Request) -> str:
    """The configured key the request carries; ApiError 404 (API off) or 401 (missing/wrong key)."""
    if not api_keys(request):
        raise ApiError(404, "not_found", OFF)
    matched = bearer_key(request)
    if matched is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                       headers={"www-authenticate": "Bearer"})
    return matched

"""API keys of the /v1 API (FLUXHOOK_API_KEYS), answered in the API's error shape.

No key configured: the API is off and answers 404. Otherwise the `Authorization: Bearer <key>`
header is matched against every configured key in constant time (receiver/web/auth.py), and a
miss is 401 with `WWW-Authenticate: Bearer`. A key whose scope does not allow an action gets 403
(receiver/config/keys.py says what each scope may do); a job a `submit` key did not create is, to
it, an unknown job (404): it does not learn that the job exists.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request

from receiver.config.keys import ApiKey
from receiver.store import Job
from receiver.web.api.errors import ApiError, not_found
from receiver.web.auth import api_keys, bearer_key

__all__ = ["authenticate", "key_scope", "visible", "writer"]

OFF = "the API is off: set FLUXHOOK_API_KEYS"


def authenticate(request: Request) -> ApiKey:
    """The configured key the request carries; ApiError 404 (API off) or 401 (missing/wrong key)."""
    if not api_keys(request):
        raise ApiError(404, "not_found", OFF)
    matched = bearer_key(request)
    if matched is None:
        raise ApiError(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                       headers={"www-authenticate": "Bearer"})
    return matched


def writer(request: Request) -> ApiKey:
    """Like :func:`authenticate`, and 403 for a key that may not create, cancel or retry jobs (scope `read`)."""
    key = authenticate(request)
    if not key.writes:
        raise ApiError(403, "forbidden", f"the key {key.name!r} has the scope {key.scope.value!r}, which reads only;"
                       " creating, canceling and retrying jobs needs a key with the scope 'submit' or 'admin'")
    return key


def visible(key: ApiKey, job: Job | None) -> Job:
    """`job` if `key` may see it; else (or for no job) 404 unknown job."""
    if job is None or not key.may_see(job.created_by):
        raise not_found("unknown job")
    return job


def key_scope(key: ApiKey) -> str:
    """A stable, non-secret name of an API key's secret: Idempotency-Keys are scoped by it."""
    return hashlib.sha256(key.secret.encode()).hexdigest()[:16]

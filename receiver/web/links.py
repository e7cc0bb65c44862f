"""`GET /files/{job_id}/{n}?expires=&sig=`: a stored result file for whoever holds a signed link to it.

Events delivered to sinks carry such links for local results (receiver/engine/links.py); no API key is
asked, the signature (receiver/results/links.py) is the credential, until `expires`. A link that is
forged, altered or expired is refused with 403 (saying which, and how to get a fresh one: GET the job's
file through the API with a key); an unknown file with 404. Answers are never cached past the link's life.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from receiver.engine.runtime import Runtime
from receiver.results.links import link_key, verify
from receiver.web.files import SECURITY_HEADERS, result_response, stored_file

__all__ = ["signed_file"]

_NUMBER = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")
_REFUSED = {**SECURITY_HEADERS, "Cache-Control": "no-store"}


async def signed_file(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    job_id: str = request.path_params["job_id"]
    raw_n, expires, sig = request.path_params["n"], request.query_params.get("expires"), request.query_params.get("sig")
    secret = rt.settings.secret_key
    if secret is None:
        return PlainTextResponse("not found", 404, headers=_REFUSED)
    if not _NUMBER.fullmatch(raw_n) or expires is None or not _NUMBER.fullmatch(expires) or sig is None \
            or not _SIG.fullmatch(sig):
        return PlainTextResponse("this link is not a signed file link", 403, headers=_REFUSED)
    now = rt.clock()
    why = verify(link_key(secret), job_id, int(raw_n), int(expires), sig, now)
    if why is not None:
        return PlainTextResponse(f"this link is refused ({why}): GET /v1/jobs/{job_id}/files/{int(raw_n)} with an"
                                 " API key, or the next event's link", 403, headers=_REFUSED)
    record = await stored_file(rt.store, job_id, int(raw_n))
    if record is None:
        return PlainTextResponse("not found", 404, headers=_REFUSED)
    return await result_response(rt.results, record, max_age=max(1, int(int(expires) - now)))

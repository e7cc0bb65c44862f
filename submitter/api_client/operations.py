"""The sans-IO operations of the /v1 calls beyond a job's life: its timeline, a download retry, the
reconciliation report, a file's URL, a create that says whether it made the job, and following many jobs.

What `fluxhook events|retry|report|url|batch` need through FLUXHOOK_API_URL; both clients run them
(:meth:`AsyncFluxhookClient.timeline` and friends), like the operations of :mod:`.core`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from submitter.api_client.core import REDIRECTS, Core, Http, Op, job_path
from submitter.api_client.errors import bad_response
from submitter.api_client.models import ApiEvent, JobView

__all__ = ["Following", "Timeline", "file_url", "report", "retry", "timeline"]

#: A job and its timeline rows (`at`, `kind`, `detail`, `id`?), oldest first.
Timeline = tuple[JobView, list[dict[str, Any]]]



def timeline(core: Core, http: Http, job_id: str) -> Op[Timeline]:
    response = yield from core.retrying(lambda: core.build(http, "GET", job_path(job_id) + "/timeline"))
    data = core.object(response, 200)
    rows = data.get("timeline")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise bad_response("a timeline without a list of rows")
    return JobView.from_json(data.get("job")), rows


def retry(core: Core, http: Http, job_id: str) -> Op[JobView]:
    """Safe to send again: a job already reopened (`succeeded`) is answered as it is."""
    response = yield from core.retrying(lambda: core.build(http, "POST", job_path(job_id) + "/retry"))
    return JobView.from_json(core.object(response, 200))


def report(core: Core, http: Http, since: str | None) -> Op[dict[str, Any]]:
    params = {"since": since} if since else {}
    response = yield from core.retrying(lambda: core.build(http, "GET", "/v1/report", params=params))
    data = core.object(response, 200)
    if not isinstance(data.get("providers"), list):
        raise bad_response("a report without `providers`")
    return data


def file_url(core: Core, http: Http, job_id: str, n: int, expires: int | None) -> Op[str]:
    """Where file `n` can be fetched: the presigned URL the API redirects to (object storage, valid
    `expires` seconds), else the API's own URL of it (fetched with the API key). Nothing is downloaded."""
    path = f"{job_path(job_id)}/files/{int(n)}"
    params = {"expires": str(expires)} if expires is not None else {}
    response = yield from core.retrying(lambda: core.build(http, "HEAD", path, params=params))
    location = response.headers.get("location")
    if response.status_code in REDIRECTS and location:
        return str(response.request.url.join(location))
    if not response.is_success:  # a HEAD answer has no body: ask again for the error's words
        response = yield from core.retrying(lambda: core.build(http, "GET", path, params=params))
        if not response.is_success:
            raise core.error(response)
    return core.base_url + path


class Following:
    """The jobs a `watch` follows on one event stream: which are not finished yet, and which views are news."""

    def __init__(self, job_ids: Iterable[str]) -> None:
        self.pending: dict[str, str | None] = dict.fromkeys(job_ids)  # id: the last status seen

    @property
    def done(self) -> bool:
        return not self.pending

    def of(self, event: ApiEvent) -> list[JobView]:
        """The event's job, if it is one of those followed."""
        return [event.data] if event.data.id in self.pending else []

    def seen(self, view: JobView) -> bool:
        """Note `view`; True if it is news (a followed job in a status not seen yet)."""
        if view.id not in self.pending or self.pending[view.id] == view.status:
            return False
        if view.terminal:
            del self.pending[view.id]
        else:
            self.pending[view.id] = view.status
        return True

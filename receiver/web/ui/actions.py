"""The UI's actions: HTML forms posting to the code the CLI and the /v1 API run.

- `POST /ui/jobs/{id}/retry`: download a job's results again (receiver/engine/retry.py, `fluxhook retry`);
- `POST /ui/jobs/{id}/cancel`: cancel a job (receiver/engine/jobs.py cancel_job); without `confirm=yes` it
  answers a page asking to confirm, whose button posts it again with it;
- `POST /ui/jobs/{id}/redeliver` (field `event`): make one of the job's events due again at every sink
  (`fluxhook redeliver EVENT`; the relay sends them on its next pass);
- `POST /ui/sinks/enable` (fields `sink`, and `job`: the page to go back to): enable a disabled sink again
  (`fluxhook sinks --enable NAME`).

Each is checked by receiver/web/ui/csrf.py (Origin and the session's token: 403 otherwise) and by the
key's scope (receiver/config/keys.py): a `read` key acts on nothing (403), a `submit` key only on its own
jobs (another's is 404, as on its page), the sink actions (redeliver, enable) are `admin` only (403).
The result is shown on the job's page: a 303 back to it with `done=` or `problem=` (a fixed code the page
words, never text from the request).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qs, quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver.config.keys import ApiKey, Scope
from receiver.engine.jobs import NotCancelable, cancel_job
from receiver.engine.retry import NotRetryable, reopen_download
from receiver.errors import ReceiverError
from receiver.store import Job
from receiver.web.bodies import read_body
from receiver.web.ui.csrf import CSRF_FIELD, csrf_problem, csrf_token
from receiver.web.ui.pages import JOB_ID, PAGE_HEADERS, caller, page, render, runtime

__all__ = ["cancel", "enable_sink", "job_path", "outcome_message", "redeliver", "retry"]

log = logging.getLogger("fluxhook.ui")

FORM_CAP = 4096
#: What the job page says after an action (`done=`), and why one did nothing (`problem=`).
DONE = {
    "retried": "Download reopened: the job's files are being fetched again.",
    "canceled": "The job is canceled.",
    "redelivered": "The event is due again at every sink; the relay sends it on its next pass.",
    "enabled": "The sink is enabled again; its pending deliveries are due now.",
}
PROBLEMS = {
    "not_retryable": "This job cannot be retried: a retry is for jobs whose download failed or expired after the"
                     " provider delivered; resubmit it otherwise.",
    "not_cancelable": "This job cannot be canceled: it finished otherwise, or its results are being stored.",
    "no_event": "No such event of this job in the outbox (pruned after FLUXHOOK_OUTBOX_RETENTION?).",
    "no_sinks": "No sinks are configured here (FLUXHOOK_FORWARD_URL, FLUXHOOK_REDIS_URL, FLUXHOOK_NATS_URL).",
    "no_sink": "No such sink.",
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _form(request: Request) -> dict[str, str]:
    try:  # the body as every route reads one: capped, and within FLUXHOOK_BODY_TIMEOUT
        body = await read_body(request, FORM_CAP, runtime(request).settings.body_timeout)
    except ReceiverError as exc:
        raise _Refused(exc.status_code, "the form is too large" if exc.status_code == 413 else str(exc)) from None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than any of these forms has
        raise _Refused(400, "the form has too many fields") from None
    return {name: values[0] for name, values in fields.items()}


def outcome_message(query: Mapping[str, str]) -> dict[str, str] | None:
    """The message for an action's outcome the query names (fixed wording), or None."""
    if query.get("done") in DONE:
        return {"kind": "done", "text": DONE[query["done"]]}
    if query.get("problem") in PROBLEMS:
        return {"kind": "problem", "text": PROBLEMS[query["problem"]]}
    return None


def job_path(job_id: str, **query: str | int) -> str:
    return f"/ui/jobs/{quote(job_id, safe='')}" + (f"?{urlencode(query)}" if query else "")


def _back(job_id: str, **query: str | int) -> Response:
    return RedirectResponse(job_path(job_id, **query), 303, headers=PAGE_HEADERS)


Action = Callable[[Request, dict[str, str], ApiKey], Awaitable[Response]]


def action(*, admin: bool = False) -> Callable[[Action], Callable[[Request], Awaitable[Response]]]:
    """A form's POST: signed in (receiver/web/ui/pages.py page), CSRF-checked, scope-checked."""

    def wrap(handler: Action) -> Callable[[Request], Awaitable[Response]]:
        @page
        async def endpoint(request: Request) -> Response:
            try:
                form = await _form(request)
                problem = csrf_problem(request, form.get(CSRF_FIELD))
                if problem is not None:
                    raise _Refused(403, problem)
                key = caller(request)
                if not key.writes:
                    raise _Refused(403, f"the key {key.name} may only read ({key.scope} scope)")
                if admin and key.scope != Scope.ADMIN:
                    raise _Refused(403, f"only an admin key may change deliveries and sinks ({key.name} is"
                                        f" {key.scope})")
                return await handler(request, form, key)
            except _Refused as exc:
                return render(request, "error.html", {"title": "Refused", "message": str(exc)}, exc.status)

        endpoint.__name__ = handler.__name__
        return endpoint

    return wrap


async def _job(request: Request, key: ApiKey) -> Job:
    job_id = request.path_params["job_id"]
    job = await runtime(request).store.get_job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or not key.may_see(job.created_by):
        raise _Refused(404, "no such job")
    return job


@action()
async def retry(request: Request, form: dict[str, str], key: ApiKey) -> Response:
    job = await _job(request, key)
    try:
        count = await reopen_download(runtime(request), job.id)
    except (KeyError, NotRetryable):
        return _back(job.id, problem="not_retryable")
    log.info("ui: %s reopened job %s for download (%d files)", key.name, job.id, count)
    return _back(job.id, done="retried", n=count)


@action()
async def cancel(request: Request, form: dict[str, str], key: ApiKey) -> Response:
    job = await _job(request, key)
    if form.get("confirm") != "yes":
        return render(request, "confirm.html", {
            "title": f"Cancel job {job.id}?", "job": job, "csrf": csrf_token(request),
            "action": job_path(job.id) + "/cancel", "back": job_path(job.id),
            "question": "Cancel this job? Its status becomes canceled for good: later results are ignored,"
                        " and the provider is asked to cancel where it can.",
        })
    try:
        await cancel_job(runtime(request), job.id)
    except (KeyError, NotCancelable):
        return _back(job.id, problem="not_cancelable")
    log.info("ui: %s canceled job %s", key.name, job.id)
    return _back(job.id, done="canceled")


@action(admin=True)
async def redeliver(request: Request, form: dict[str, str], key: ApiKey) -> Response:
    job = await _job(request, key)
    rt = runtime(request)
    event_id = form.get("event", "")
    if event_id not in {e.id for e in await rt.store.events_after(0, job_id=job.id)}:
        return _back(job.id, problem="no_event")
    await rt.relay.register()
    count = await rt.store.redeliver(event_id, sinks_for=rt.relay.sinks_for(), now=rt.clock())
    if count < 0:
        return _back(job.id, problem="no_event")
    if count == 0 and not rt.relay.sinks:
        return _back(job.id, problem="no_sinks")
    log.info("ui: %s made event %s due again (%d deliveries)", key.name, event_id, count)
    return _back(job.id, done="redelivered", n=count)


@action(admin=True)
async def enable_sink(request: Request, form: dict[str, str], key: ApiKey) -> Response:
    rt = runtime(request)
    name = form.get("sink", "")
    job_id = form.get("job", "")
    if not JOB_ID.fullmatch(job_id):
        raise _Refused(400, "the form names no job to go back to")
    if not await rt.store.enable_sink(name, now=rt.clock()):
        return _back(job_id, problem="no_sink")
    log.info("ui: %s enabled sink %s again", key.name, name)
    return _back(job_id, done="enabled")

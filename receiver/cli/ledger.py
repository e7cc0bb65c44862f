"""What the commands working on the ledger (FLUXHOOK_DB) share: finding a job, the view of it they
print, and waiting for it to finish by sweeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from receiver.cli.common import CLIError, WaitTimeout, timed
from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.engine.sweep import sweep_once
from receiver.store import Job
from receiver.store.summary import shorten
from submitter.status import TERMINAL, Status

__all__ = ["find_job", "job_view", "listed", "local_only", "result_via", "shown", "wait_for"]


def local_only(settings: Settings, command: str, why: str) -> None:
    """CLIError when FLUXHOOK_API_URL is set: `command` works on the database only, for the reason `why`
    (never a silent local ledger on a host that said it goes through the API)."""
    if settings.integrations.api_url:
        raise CLIError(f"`fluxhook {command}` works on the database (FLUXHOOK_DB), not through FLUXHOOK_API_URL: "
                       f"{why}. Run it where the database is, with FLUXHOOK_API_URL unset")


async def find_job(rt: Runtime, job_id: str) -> Job:
    """The job, or a CLIError naming the database it is not in."""
    job = await rt.store.get_job(job_id)
    if job is None:
        raise CLIError(f"no job {job_id!r} in {rt.settings.db_display}")
    return job


def _short(value: Any, limit: int = 120) -> Any:
    """Long strings (inline base64 images) shortened for display; everything else as is."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:40]}...({len(value)} chars)"
    if isinstance(value, dict):
        return {k: _short(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v, limit) for v in value]
    return value


def result_via(job: Job) -> str | None:
    """How the provider's result reached us: by a verified callback, or by our polling (None if no result)."""
    if job.status not in (Status.SUCCEEDED, Status.STORED) and not job.outputs:
        return None
    return "callback" if job.callback_at is not None else "poll"


def shown(rt: Runtime, job: Job) -> dict[str, Any]:
    """What the CLI prints of a job, scrubbed again (rows written before redaction existed); times in ISO 8601 UTC."""
    view = job.public()
    for key in ("error", "note"):
        view[key] = rt.redactor.scrub(view[key], job_id=job.id, provider=job.provider)
    view["via"] = result_via(job)
    return timed(view)


def listed(rt: Runtime, job: Job) -> dict[str, Any]:
    """A job as `fluxhook list` prints it: what `shown` shows, its prompt cut to PROMPT_CHARS and its metadata."""
    prompt = job.params.get("prompt")
    return shown(rt, job) | {"prompt": shorten(prompt) if isinstance(prompt, str) else None,
                             "metadata": job.metadata or None}


async def job_view(rt: Runtime, job_id: str, *, full: bool = False) -> dict[str, Any]:
    """A job as `fluxhook status` prints it: prompt (cut to PROMPT_CHARS unless `full`), params (shortened),
    metadata and its files."""
    job = await find_job(rt, job_id)
    view = shown(rt, job)
    params = dict(job.params)
    prompt = params.pop("prompt", None)
    view["prompt"] = prompt if full or not isinstance(prompt, str) else shorten(prompt)
    view["params"] = _short(params) or None
    view["metadata"] = job.metadata or None
    view["files"] = [
        {"n": f.n, "location": rt.results.location(f.path) if f.path else None, "size": f.size,
         "sha256": f.sha256, "content_type": f.content_type}
        for f in await rt.store.files(job_id)
    ]
    return view


async def wait_for(rt: Runtime, job_id: str, within: float,
                   on_change: Callable[[Job], None] | None = None) -> None:
    """Sweep until the job is finished; WaitTimeout after `within` seconds (the job goes on). `on_change`
    is called with the job each time its status or note is seen to change (the first look included)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    job = None
    seen: tuple[str, str | None] | None = None
    while loop.time() < end:
        await sweep_once(rt)
        job = await rt.store.get_job(job_id)
        if job is not None and on_change is not None and (job.status, job.note) != seen:
            seen = (job.status, job.note)
            on_change(job)
        if job is None or job.status in TERMINAL:
            return
        await asyncio.sleep(1.0)
    note = f" (note: {shown(rt, job)['note']})" if job is not None and job.note else ""
    raise WaitTimeout(f"job {job_id} not finished after {within:.0f} s{note}; it goes on: `fluxhook status {job_id}`")

"""`fluxhook submit|status|list|url|retry` through a fluxhook /v1 API (FLUXHOOK_API_URL) instead of the database.

For hosts that cannot reach the ledger: the same commands, the same output, and
`submit --wait` (and `retry`) wait on the job's event stream instead of sweeping. `events`, `cancel` and
`report` are in receiver/cli/remote_ops.py, `batch` in receiver/cli/remote_batch.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from receiver.cli.common import EXIT_FAILED, CLIError, WaitTimeout
from receiver.cli.common import print_rows as _print
from receiver.cli.remote_api import answers as _answers
from receiver.cli.remote_api import client as _client
from receiver.config.settings import Settings
from submitter.api_client import JobView
from submitter.status import TERMINAL, Status

__all__ = ["list_jobs", "retry", "status", "submit", "url"]


def _shown(job: JobView) -> dict[str, Any]:
    """The keys and order of `Job.public()` (no `polls`: the API does not show it); times in ISO 8601 UTC,
    as the API gives them and as the database path prints them."""
    return {
        "id": job.id, "provider": job.provider, "model": job.model, "status": job.status,
        "provider_job_id": job.provider_job_id, "created_at": job.created_at,
        "updated_at": job.updated_at, "error": job.error, "note": job.note,
    }


def _job_view(job: JobView) -> dict[str, Any]:
    view = _shown(job)
    view["files"] = [
        {"n": f.n, "location": f.location, "size": f.size, "sha256": f.sha256, "content_type": f.content_type}
        for f in job.files
    ]
    return view


async def submit(args: argparse.Namespace, settings: Settings) -> int:
    params = {"prompt": args.prompt, **dict(args.param or [])}
    events = [e.strip() for e in args.events.split(",") if e.strip()] if args.events is not None else None
    async with _client(settings) as client:
        with _answers():
            job = await client.create(args.provider, args.model, params, events=events)
            if args.wait:
                print(f"{job.id}: recorded ({args.provider} {args.model}); waiting for it: Ctrl-C stops waiting, "
                      "the job goes on", file=sys.stderr, flush=True)
                within = args.timeout or settings.job_deadline
                try:
                    job = await client.wait(job.id, within)
                except asyncio.CancelledError:
                    print(f"interrupted; job {job.id} goes on: `fluxhook status {job.id}`", file=sys.stderr)
                    raise
                except TimeoutError:
                    raise WaitTimeout(f"job {job.id} not finished after {within:.0f} s; it goes on: "
                                   f"`fluxhook status {job.id}`") from None
    view = _job_view(job)
    if args.json:
        _print(view, True)
    else:
        print(view["id"])
        if args.wait or view["status"] in TERMINAL:
            _print(view, False)
    return 1 if view["status"] in TERMINAL - {Status.STORED} else 0


async def status(args: argparse.Namespace, settings: Settings) -> int:
    async with _client(settings) as client:
        with _answers():
            job = await client.get(args.job)
    _print(_job_view(job), args.json)
    return 0


async def list_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """`--limit` above the API's page size of 200 reads as many pages as it takes."""
    views: list[dict[str, Any]] = []
    if args.limit > 0:
        async with _client(settings) as client:
            pages = client.iter_jobs(args.status, page_size=min(args.limit, 200))
            with _answers():
                async with contextlib.aclosing(pages):
                    async for job in pages:
                        views.append(_shown(job) | {"metadata": job.metadata or None})  # the API shows no prompt
                        if len(views) >= args.limit:
                            break
    _print(views, args.json)
    return 0


async def url(args: argparse.Namespace, settings: Settings) -> int:
    """The presigned URL the API redirects a stored file to (results in object storage); where the server
    keeps results in a folder, the API's own URL of the file (fetched with the API key). Nothing is downloaded."""
    async with _client(settings) as client:
        with _answers():
            job = await client.get(args.job)
            stored = sorted(f.n for f in job.files)
            if args.n not in stored:
                raise CLIError(f"job {args.job} has no stored file {args.n} (files: {stored or 'none'})")
            found = await client.file_url(args.job, args.n, expires=max(1, round(args.expires)))
    print(found)
    if found.startswith(client.base_url + "/v1/"):
        print("the server keeps its results in a folder, so this is the API's URL of the file: fetch it with "
              "the header `Authorization: Bearer $FLUXHOOK_API_KEY`", file=sys.stderr)
    return 0


async def retry(args: argparse.Namespace, settings: Settings) -> int:
    """`POST /v1/jobs/{id}/retry`, then (unless --no-wait) the job's event stream until it ends."""
    async with _client(settings) as client:
        with _answers():
            job = await client.retry(args.job)
            print(f"{args.job} reopened: downloading its files again (fresh URLs are polled if expired)",
                  file=sys.stderr)
            if args.no_wait:
                print(args.job)
                return 0
            within = args.timeout or settings.download_window
            try:
                job = await client.wait(job.id, within)
            except TimeoutError:
                raise WaitTimeout(f"job {job.id} not finished after {within:.0f} s; it goes on: "
                                  f"`fluxhook status {job.id}`") from None
    view = _job_view(job)
    _print(view, args.json)
    return EXIT_FAILED if view["status"] in TERMINAL - {Status.STORED} else 0

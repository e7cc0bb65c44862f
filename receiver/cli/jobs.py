"""`fluxhook submit|status|list|url|sweep`: jobs in the ledger (or, with FLUXHOOK_API_URL, through
the /v1 API: receiver/cli/remote.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from receiver.cli import remote
from receiver.cli.common import EXIT_FAILED, CLIError, print_rows
from receiver.cli.inputs import InputError, resolve_params
from receiver.cli.ledger import find_job, job_view, listed, local_only, wait_for
from receiver.config.settings import Settings
from receiver.engine.jobs import new_job, send_new
from receiver.engine.runtime import Runtime
from receiver.engine.sweep import sweep_once
from receiver.store import Job
from submitter.status import TERMINAL, Status

__all__ = ["list_jobs", "resolve_images", "status", "submit", "sweep", "url"]


def resolve_images(settings: Settings, provider: str, params: dict[str, Any],
                   base_dir: Path | None = None) -> dict[str, Any]:
    """`@FILE` values of image fields as the provider takes them (receiver.cli.inputs); CLIError names the problem."""
    shape = settings.provider(provider).dialect.shape.name
    try:
        return resolve_params(params, shape=shape, base_dir=base_dir)
    except InputError as exc:
        raise CLIError(str(exc)) from None


async def submit(args: argparse.Namespace, settings: Settings) -> int:
    params = resolve_images(settings, args.provider, {"prompt": args.prompt, **dict(args.param or [])})
    if settings.integrations.api_url:
        args.param = [(k, v) for k, v in params.items() if k != "prompt"]
        return await remote.submit(args, settings)
    settings.require_public()
    settings.require_credentials(args.provider)  # before the job is recorded: BFL_API_KEY is not set
    events = [e.strip() for e in args.events.split(",") if e.strip()] if args.events is not None else None
    async with Runtime.open(settings) as rt:
        try:
            job = await new_job(rt, args.provider, args.model, params, events=events)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if args.wait:
            print(f"{job.id}: recorded ({args.provider} {args.model}); waiting for it: Ctrl-C stops waiting, "
                  "the job goes on", file=sys.stderr, flush=True)
        try:
            await send_new(rt, job)
            if args.wait:
                await wait_for(rt, job.id, args.timeout or settings.job_deadline,
                               on_change=lambda changed: said(rt, changed))
        except asyncio.CancelledError:
            # Ctrl-C: the job is in the ledger and goes on without us (an interrupted submit is settled
            # by the sweep when our lease lapses); say which one before exiting 130.
            print(f"interrupted; job {job.id} goes on: `fluxhook status {job.id}`", file=sys.stderr)
            raise
        view = await job_view(rt, job.id)
    if args.json:
        print_rows(view, True)
    else:
        print(job.id if not args.wait else view["id"])
        if args.wait or view["status"] in TERMINAL:
            print_rows(view, False)
    return EXIT_FAILED if view["status"] in TERMINAL - {Status.STORED} else 0


def said(rt: Runtime, job: Job) -> None:
    """One line on stderr for each change `submit --wait` sees: the status (with what it means now) and the note."""
    meaning = {Status.SUBMITTED: f"provider task {job.provider_job_id or '(unknown yet)'}",
               Status.SUCCEEDED: "downloading the result", Status.QUEUED: "not sent yet"}.get(job.status)
    error, note = (rt.redactor.scrub(text, job_id=job.id, provider=job.provider) for text in (job.error, job.note))
    line = f"{job.id}: {job.status}" + (f" ({meaning})" if meaning else "")
    line += f": {error}" if error and job.status in TERMINAL else ""
    print(line + (f"; note: {note}" if note else ""), file=sys.stderr, flush=True)


async def status(args: argparse.Namespace, settings: Settings) -> int:
    if settings.integrations.api_url:
        return await remote.status(args, settings)
    async with Runtime.open(settings) as rt:
        view = await job_view(rt, args.job, full=args.full)
        print_rows(view, args.json)
        if not args.full and isinstance(view["prompt"], str) and view["prompt"].endswith("…"):
            length = len((await find_job(rt, args.job)).params["prompt"])
            if length > len(view["prompt"]):
                print(f"(the prompt is cut to {len(view['prompt'])} of its {length} characters: `--full` shows "
                      "it all)", file=sys.stderr)
    print(f"(database {settings.db_display}, results {settings.results_display})", file=sys.stderr)
    return 0


async def url(args: argparse.Namespace, settings: Settings) -> int:
    if settings.integrations.api_url:
        return await remote.url(args, settings)
    async with Runtime.open(settings) as rt:
        await find_job(rt, args.job)
        files = {f.n: f for f in await rt.store.files(args.job)}
        record = files.get(args.n)
        if record is None or not record.stored or not record.path:
            raise CLIError(f"job {args.job} has no stored file {args.n} (files: {sorted(files) or 'none'})")
        print(await rt.results.presign(record.path, args.expires))
    return 0


async def list_jobs(args: argparse.Namespace, settings: Settings) -> int:
    if settings.integrations.api_url:
        return await remote.list_jobs(args, settings)
    async with Runtime.open(settings) as rt:
        jobs = await rt.store.list_jobs(Status(args.status) if args.status else None, args.limit)
        views = [listed(rt, j) for j in jobs]
    print_rows(views, args.json)
    return 0


async def sweep(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "sweep", "a sweep does the background duties on the database (through the API, "
               "`POST /v1/sweep` with FLUXHOOK_SWEEP_TOKEN does one pass)")
    async with Runtime.open(settings) as rt:
        report = await sweep_once(rt)
    print_rows(report.as_dict(), args.json)
    return 0

"""`fluxhook events|cancel|retry|replay|report`: a job's timeline, and the operations people reach for.

With FLUXHOOK_API_URL set, each but `replay` goes through the /v1 API instead (receiver/cli/remote_ops.py).
"""

from __future__ import annotations

import argparse
import sys

from receiver.cli import remote, remote_ops
from receiver.cli.common import EXIT_FAILED, CLIError, print_rows, timed
from receiver.cli.ledger import find_job, job_view, local_only, wait_for
from receiver.cli.views import print_canceled, print_report, print_timeline, since
from receiver.config.settings import Settings
from receiver.engine.jobs import NotCancelable, apply_report, cancel_job
from receiver.engine.report import report as build_report
from receiver.engine.retry import NotRetryable, reopen_download
from receiver.engine.runtime import Runtime
from receiver.engine.timeline import timeline
from receiver.store import TaskMismatch
from submitter.bodies import BodyError, loads_object
from submitter.dialects import parse_observation
from submitter.status import TERMINAL, Status
from submitter.urls import too_many_outputs

__all__ = ["cancel", "events", "replay", "report", "retry"]


# -- events ------------------------------------------------------------------------------

async def events(args: argparse.Namespace, settings: Settings) -> int:
    if settings.integrations.api_url:
        return await remote_ops.events(args, settings)
    async with Runtime.open(settings) as rt:
        job = await find_job(rt, args.job)
        rows = [timed(r) for r in await timeline(rt, job)]
    print_timeline(rows, str(job.status), job.error, args.json)
    return 0


# -- cancel ------------------------------------------------------------------------------

async def cancel(args: argparse.Namespace, settings: Settings) -> int:
    if settings.integrations.api_url:
        return await remote_ops.cancel(args, settings)
    async with Runtime.open(settings) as rt:
        try:
            job = await cancel_job(rt, args.job)
        except KeyError:
            raise CLIError(f"no job {args.job!r} in {settings.db_display}") from None
        except NotCancelable as exc:
            print(f"fluxhook cancel: {args.job}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print_canceled(job.id, job.provider, job.provider_job_id)
    return 0


# -- retry -------------------------------------------------------------------------------

async def retry(args: argparse.Namespace, settings: Settings) -> int:
    """A job whose results were paid for but not stored (download refused/expired) gets another go
    (receiver.engine.retry.reopen_download), then the download pass runs here until it ends."""
    if settings.integrations.api_url:
        return await remote.retry(args, settings)
    async with Runtime.open(settings) as rt:
        try:
            pending = await reopen_download(rt, args.job)
        except KeyError:
            raise CLIError(f"no job {args.job!r} in {settings.db_display}") from None
        except NotRetryable as exc:
            raise CLIError(str(exc)) from None
        print(f"{args.job} reopened: downloading {pending} file(s) again (fresh URLs are polled if expired)",
              file=sys.stderr)
        if args.no_wait:
            print(args.job)
            return 0
        await wait_for(rt, args.job, args.timeout or settings.download_window)
        view = await job_view(rt, args.job)
    print_rows(view, args.json)
    return EXIT_FAILED if view["status"] in TERMINAL - {Status.STORED} else 0


# -- replay ------------------------------------------------------------------------------

async def replay(args: argparse.Namespace, settings: Settings) -> int:
    """Apply a kept callback again through the receiver's parse + apply path (not recorded again:
    no audit row, no dedup). Harmless by the state machine: a finished job changes nothing, a
    stale status cannot move a job back."""
    local_only(settings, "replay", "it applies a kept callback in the database, and the API has no route for that")
    try:
        event_id = int(args.event)
    except ValueError:
        raise CLIError(f"event ids are numbers (as `fluxhook events JOB` shows them), got {args.event!r}") from None
    async with Runtime.open(settings) as rt:
        event = await rt.store.audit_event(event_id)
        if event is None:
            raise CLIError(f"no kept callback {event_id} (pruned after FLUXHOOK_EVENT_RETENTION, or never kept)")
        job = await find_job(rt, event["job_id"])
        try:
            observation = parse_observation(rt.settings.provider(event["provider"]).dialect,
                                            loads_object(event["body"]))
        except (BodyError, KeyError, ValueError) as exc:
            raise CLIError(f"callback {event_id} cannot be read: {exc}") from None
        refusal = too_many_outputs(observation, rt.settings.max_outputs)
        if refusal:
            raise CLIError(f"callback {event_id}: {refusal}")
        try:
            outcome = await apply_report(rt, event["provider"], job.id, observation, now=rt.clock())
        except TaskMismatch as exc:
            raise CLIError(f"callback {event_id}: {exc}") from None
    before, after = str(job.status), str(outcome.status)
    print(f"callback {event_id} for {job.id} said {observation.status or '(no status)'}: "
          + (f"{before} -> {after}" if outcome.changed else f"no change (job is {after})"))
    if outcome.status == Status.SUCCEEDED:
        print("its files are due: `fluxhook sweep` (or a running `serve`) downloads them")
    return 0


# -- report ------------------------------------------------------------------------------

async def report(args: argparse.Namespace, settings: Settings) -> int:
    if settings.integrations.api_url:
        return await remote_ops.report(args, settings)
    after = since(args.since)
    async with Runtime.open(settings) as rt:
        data = await build_report(rt, after)
    print_report(data, as_json=args.json, as_csv=args.csv)
    return 0

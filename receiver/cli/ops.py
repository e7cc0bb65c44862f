"""`fluxhook events|cancel|retry|replay|report`: a job's timeline, and the operations people reach for."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from datetime import UTC, datetime
from typing import Any

from receiver.cli.common import EXIT_FAILED, CLIError, print_rows, timed
from receiver.cli.ledger import find_job, job_view, local_only, wait_for
from receiver.config.settings import Settings
from receiver.engine.jobs import NotCancelable, apply_report, cancel_job
from receiver.engine.runtime import Runtime
from receiver.store import Job, TaskMismatch, iso
from submitter.bodies import BodyError, loads_object
from submitter.dialects import parse_observation
from submitter.status import TERMINAL, Status
from submitter.urls import too_many_outputs

__all__ = ["cancel", "events", "reconcile", "replay", "report", "retry"]


def _callback_status(rt: Runtime, provider: str, body: bytes) -> str | None:
    """What a kept callback body said, read the way the receiver reads it (None if unreadable)."""
    try:
        observation = parse_observation(rt.settings.provider(provider).dialect, loads_object(body))
    except (BodyError, KeyError, ValueError):
        return None
    return str(observation.status) if observation.status is not None else None


# -- events ------------------------------------------------------------------------------

async def timeline(rt: Runtime, job: Job) -> list[dict[str, Any]]:
    """Everything known about `job`, in time order: its creation and submit, each kept callback (with
    its audit id and verdict), each outbox event and each delivery of it."""
    job_id = job.id
    rows: list[dict[str, Any]] = [{"at": job.created_at, "kind": "created", "detail": f"{job.provider} {job.model}"}]
    if job.submitted_at is not None:
        rows.append({"at": job.submitted_at, "kind": "submitted",
                     "detail": f"provider task {job.provider_job_id or '(unknown: submit outcome unknown)'}"})
    for e in await rt.store.audit_events(job_id):
        said = _callback_status(rt, e["provider"], e["body"])
        rows.append({"at": e["received_at"], "kind": "callback", "id": e["id"],
                     "detail": f"{e['verdict']}; said {said or '(unreadable)'}"})
    sinks = {s.name: s.display for s in await rt.store.sinks()}
    for ev in await rt.store.events_after(0, limit=10_000, job_id=job_id):
        rows.append({"at": ev.created_at, "kind": "event", "id": ev.id, "detail": ev.type})
        for d in await rt.store.deliveries(None, limit=1000, event_id=ev.id):
            when = d.delivered_at or d.next_at or d.created_at
            last = d.last_code or d.last_error or "-"
            rows.append({"at": when, "kind": "delivery", "id": ev.id,
                         "detail": f"-> {sinks.get(d.sink, d.sink)} {d.state} attempts={d.attempts} last={last}"})
    rows.sort(key=lambda r: (r["at"], r["kind"] != "created"))
    return [timed(r) for r in rows]


async def events(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "events")

    async with Runtime.open(settings) as rt:
        job = await find_job(rt, args.job)
        rows = await timeline(rt, job)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    for row in rows:
        ident = f"  [{row['id']}]" if "id" in row else ""
        print(f"{row['at']}  {row['kind']:<9} {row['detail']}{ident}")
    print(f"now: {job.status}" + (f" ({job.error})" if job.error else ""))
    if any(r["kind"] == "callback" for r in rows):
        print("replay a callback: `fluxhook replay ID` (the number in brackets)")
    return 0


# -- cancel ------------------------------------------------------------------------------

async def cancel(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "cancel")

    async with Runtime.open(settings) as rt:
        try:
            job = await cancel_job(rt, args.job)
        except KeyError:
            raise CLIError(f"no job {args.job!r} in {settings.db_display}") from None
        except NotCancelable as exc:
            print(f"fluxhook cancel: {args.job}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(f"{job.id} canceled" + ("" if job.provider_job_id else " (it had no provider task yet)"))
    if job.provider_job_id and settings.provider(job.provider).dialect.cancel_path is None:
        print(f"fluxhook cancel: {job.provider} has no cancel endpoint: the provider may still run the job and "
              "bill it (fluxhook ignores its result)", file=sys.stderr)
    return 0


# -- retry -------------------------------------------------------------------------------

async def retry(args: argparse.Namespace, settings: Settings) -> int:
    """A job whose results were paid for but not stored (download refused/expired) gets another go.

    Only a job that ended `failed`/`expired` in OUR download path qualifies: it has a provider task
    and result files not stored (file rows exist only once the provider reported a result). The
    store moves it back to `succeeded` (`reopen_for_retry`, the one sanctioned exception to final
    statuses), then the normal download pass runs; expired URLs are re-polled for fresh ones. A job
    the provider failed, moderated or that was canceled is refused: resubmit it instead."""
    local_only(settings, "retry")

    async with Runtime.open(settings) as rt:
        job = await find_job(rt, args.job)
        files = await rt.store.files(args.job)
        pending = [f for f in files if not f.stored]
        if job.status not in (Status.FAILED, Status.EXPIRED) or not job.provider_job_id or not pending:
            why = (f"it is {job.status}" if job.status not in (Status.FAILED, Status.EXPIRED)
                   else "the provider never reported a result for it" if not files
                   else "it has no provider task id" if not job.provider_job_id else "its files are all stored")
            raise CLIError(f"job {args.job} cannot be retried: {why}. `fluxhook retry` is for jobs whose "
                           "download failed or expired after the provider delivered; resubmit otherwise")
        now = rt.clock()
        if not await rt.store.reopen_for_retry(args.job, now=now, store_until=now):
            raise CLIError(f"job {args.job} changed meanwhile; see `fluxhook status {args.job}`")
        print(f"{args.job} reopened: downloading {len(pending)} file(s) again (fresh URLs are polled if expired)",
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
    local_only(settings, "replay")

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

COLUMNS = ("provider", "jobs", "submitted", "stored", "failed_by_provider", "moderated", "failed_download",
           "expired_before_download", "expired", "canceled", "in_progress", "paid_not_delivered",
           "delivered_twice", "rescued_by_poll", "callbacks_kept")


def reconcile(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per provider (and a `total` row): what was submitted, stored, lost and how."""
    out: dict[str, dict[str, Any]] = {}

    def bump(provider: str, key: str, n: int = 1) -> None:
        for name in (provider, "total"):
            row = out.setdefault(name, {c: 0 for c in COLUMNS} | {"provider": name})
            row[key] += n

    for r in rows:
        p, status, had_result = r["provider"], r["status"], r["files"] > 0
        bump(p, "jobs")
        bump(p, "callbacks_kept", int(r["callbacks"]))
        if r["provider_job_id"] or r["submitted_at"] is not None:
            bump(p, "submitted")
        if status == "stored":
            bump(p, "stored")
            if r["callback_at"] is None and r["polls"] > 0:
                bump(p, "rescued_by_poll")
        elif status == "failed":
            bump(p, "failed_download" if had_result else "failed_by_provider")
        elif status == "moderated":
            bump(p, "moderated")
        elif status == "expired":
            bump(p, "expired_before_download" if had_result else "expired")
        elif status == "canceled":
            bump(p, "canceled")
        else:
            bump(p, "in_progress")
        if had_result and status in ("failed", "expired") and r["stored_files"] < r["files"]:
            bump(p, "paid_not_delivered")  # the provider delivered (and billed); we have no file
        if r["stored_events"] > 1:
            bump(p, "delivered_twice")
    total = out.pop("total", None)
    return [out[k] for k in sorted(out)] + ([total] if total else [])


def _since(text: str | None) -> float | None:
    """--since: ISO 8601 (2026-01-31, 2026-01-31T12:00Z) or a duration back from now (90m, 24h, 7d)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now().timestamp() - float(text[:-1]) * units[text[-1]]
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"--since takes an ISO 8601 time or a duration such as 24h or 7d, got {text!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


async def report(args: argparse.Namespace, settings: Settings) -> int:
    local_only(settings, "report")

    since = _since(args.since)
    async with Runtime.open(settings) as rt:
        rows = reconcile(await rt.store.reconciliation(since))
    if args.json:
        print(json.dumps({"since": iso(since), "providers": rows,
                          "orphan_callbacks": None,
                          "orphan_callbacks_note": "not recorded: a verified callback for an unknown job is "
                                                   "answered 404 and kept nowhere"}, indent=2, sort_keys=True))
        return 0
    if args.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        print(buf.getvalue(), end="")
        return 0
    print(f"since {iso(since) or 'the beginning'}")
    if not rows:
        print("no jobs")
        return 0
    width = max(len(c) for c in COLUMNS)
    names = [r["provider"] for r in rows]
    print(" " * width + "  " + "  ".join(f"{n:>10}" for n in names))
    for column in COLUMNS[1:]:
        print(f"{column:<{width}}  " + "  ".join(f"{r[column]:>10}" for r in rows))
    print("orphan callbacks: not recorded (a callback for an unknown job is answered 404 and kept nowhere)")
    return 0

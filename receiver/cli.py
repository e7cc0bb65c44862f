"""The `fluxhook` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from submitter.dialects import DIALECTS
from submitter.status import TERMINAL, Status

from .cli_outbox import OUTBOX_COMMANDS, OutboxCLIError, add_arguments
from .settings import Settings, SettingsError
from .sinks import SinkError
from .store import StoreUnavailable

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A problem to report on stderr with exit status 2."""


class ApiUnavailable(Exception):
    """The fluxhook API (FLUXHOOK_API_URL) did not answer or said "try later": exit status 1, like a down store."""


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        if isinstance(row, dict):
            print("  ".join(f"{k}={v}" for k, v in row.items() if v is not None and k != "files"))
            for f in row.get("files", []):
                print(f"    file {f['n']}: {f['path'] or '(pending)'}  {f['size'] or ''}  {f['sha256'] or ''}")
        else:
            print(row)


async def _job_view(rt: Any, job_id: str) -> dict[str, Any]:
    job = await rt.store.get_job(job_id)
    if job is None:
        raise CLIError(f"no job {job_id!r} in {rt.settings.db_display}")
    view = _shown(rt, job)
    view["files"] = [
        {"n": f.n, "path": rt.results.location(f.path) if f.path else None, "size": f.size,
         "sha256": f.sha256, "content_type": f.content_type}
        for f in await rt.store.files(job_id)
    ]
    return view


def _shown(rt: Any, job: Any) -> dict[str, Any]:
    """What the CLI prints of a job, scrubbed again (rows written before redaction existed)."""
    view = job.public()
    for key in ("error", "note"):
        view[key] = rt.redactor.scrub(view[key], job_id=job.id, provider=job.provider)
    return view


async def _wait(rt: Any, job_id: str, within: float) -> None:
    from .sweep import sweep_once

    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        await sweep_once(rt)
        job = await rt.store.get_job(job_id)
        if job is None or job.status in TERMINAL:
            return
        await asyncio.sleep(1.0)
    raise CLIError(f"job {job_id} not finished after {within:.0f} s; it goes on: `fluxhook status {job_id}`")


async def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from .jobs import submit
    from .runtime import Runtime

    if settings.integrations.api_url:
        from . import cli_api

        return await cli_api.submit(args, settings)
    settings.require_public()
    params = {"prompt": args.prompt, **dict(args.param or [])}
    events = [e.strip() for e in args.events.split(",") if e.strip()] if args.events is not None else None
    async with Runtime.open(settings) as rt:
        try:
            job = await submit(rt, args.provider, args.model, params, events=events)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if args.wait:
            await _wait(rt, job.id, args.timeout or settings.job_deadline)
        view = await _job_view(rt, job.id)
    if args.json:
        _print(view, True)
    else:
        print(job.id if not args.wait else view["id"])
        if args.wait or view["status"] in TERMINAL:
            _print(view, False)
    return 1 if view["status"] in TERMINAL - {Status.STORED} else 0


async def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import Runtime

    if settings.integrations.api_url:
        from . import cli_api

        return await cli_api.status(args, settings)
    async with Runtime.open(settings) as rt:
        _print(await _job_view(rt, args.job), args.json)
    return 0


async def _cmd_url(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import Runtime

    async with Runtime.open(settings) as rt:
        job = await rt.store.get_job(args.job)
        if job is None:
            raise CLIError(f"no job {args.job!r} in {settings.db_display}")
        files = {f.n: f for f in await rt.store.files(args.job)}
        record = files.get(args.n)
        if record is None or not record.stored or not record.path:
            raise CLIError(f"job {args.job} has no stored file {args.n} (files: {sorted(files) or 'none'})")
        print(await rt.results.presign(record.path, args.expires))
    return 0


async def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import Runtime

    if settings.integrations.api_url:
        from . import cli_api

        return await cli_api.list_jobs(args, settings)
    async with Runtime.open(settings) as rt:
        jobs = await rt.store.list_jobs(Status(args.status) if args.status else None, args.limit)
        views = [_shown(rt, j) for j in jobs]
    _print(views, args.json)
    return 0


async def _cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from .runtime import Runtime
    from .sweep import sweep_once

    async with Runtime.open(settings) as rt:
        report = await sweep_once(rt)
    _print(report.as_dict(), args.json)
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .app import create_app
    from .server import run

    settings.require_public()
    run(create_app(settings), settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0


async def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .store import open_store, schema_behind
    from .store.sql import LATEST

    store = open_store(settings.db, pool_size=1)
    await store.open(migrate=False)
    try:
        before, versions = await store.migrate(apply=not args.check)
    finally:
        await store.close()
    where = settings.db_display
    if args.check:
        if versions:
            print(schema_behind(where, before, versions))
            return 1
        print(f"{where}: schema version {before}, current")
        return 0
    if versions:
        print(f"{where}: schema version {LATEST} (applied {', '.join(map(str, versions))})")
    else:
        print(f"{where}: schema version {LATEST}, already current")
    return 0


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from submitter.simulator import run_simulator

    run_simulator(host=args.host, port=args.port)
    return 0


async def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return await run_demo(settings, jobs=args.jobs)


COMMANDS: dict[str, tuple[str, str, Any]] = {
    "serve": (
        "run the receiver, with the polling sweep and downloads in-process",
        "FLUXHOOK_PUBLIC_URL=https://hooks.example.com FLUXHOOK_SECRET_KEY=... fluxhook serve --port 8000",
        _cmd_serve,
    ),
    "submit": (
        "record a job, send it to a provider with its own webhook, print our job id",
        'fluxhook submit --provider bfl --model flux-dev --prompt "a red fox" --param width=1024 --wait',
        _cmd_submit,
    ),
    "status": ("show one job and its files", "fluxhook status fh_0123abcd... --json", _cmd_status),
    "list": ("list recent jobs", "fluxhook list --status failed --json", _cmd_list),
    "url": (
        "print a time-limited download URL for a stored result file (a local folder: its path)",
        "fluxhook url fh_0123abcd... 0 --expires 600",
        _cmd_url,
    ),
    "sweep": (
        "one pass of the polling fallback, deferred submits and download retries, then exit (for cron)",
        "*/1 * * * * cd /srv/fluxhook && fluxhook sweep",
        _cmd_sweep,
    ),
    "migrate": (
        "apply the database schema migrations and print the version (--check: exit 1 if not current)",
        "FLUXHOOK_DB=postgresql://fluxhook@db:5432/fluxhook fluxhook migrate   # before rolling out replicas",
        _cmd_migrate,
    ),
    "simulate": (
        "run the built-in provider simulator alone (BFL, DeerAPI and CometAPI shapes)",
        "fluxhook simulate --port 8900   # then FLUXHOOK_BFL_URL=http://127.0.0.1:8900",
        _cmd_simulate,
    ),
    "demo": (
        "run receiver and simulator on loopback, submit a few jobs, show the stored files",
        "fluxhook demo",
        _cmd_demo,
    ),
    **OUTBOX_COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxhook",
        description="Submit FLUX image jobs with per-job webhooks, receive verified callbacks, keep every result.",
        epilog="Settings come from FLUXHOOK_* environment variables; see README.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (summary, example, _) in COMMANDS.items():
        parsers[name] = sub.add_parser(
            name, help=summary, description=summary, epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    for name in ("serve", "simulate"):
        parsers[name].add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parsers["serve"].add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parsers["serve"].add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    parsers["simulate"].add_argument("--port", type=int, default=8900, help="port (default 8900)")
    p = parsers["submit"]
    p.add_argument("--provider", required=True, choices=sorted(DIALECTS), help="which API to send the job to")
    p.add_argument("--model", required=True,
                   help="model: flux-dev, flux-2-pro... (BFL shapes) or owner/name such as "
                        "black-forest-labs/flux-1.1-pro (Replicate shapes)")
    p.add_argument("--prompt", required=True, help="the text prompt")
    p.add_argument("--param", action="append", type=_param, metavar="KEY=VALUE",
                   help="extra request field; VALUE is parsed as JSON when it can be (repeatable)")
    p.add_argument("--events", metavar="LIST",
                   help="Replicate providers: webhook events, from start,output,logs,completed "
                        "(default start,completed)")
    p.add_argument("--wait", action="store_true",
                   help="wait until the job finishes (sweeping meanwhile; with FLUXHOOK_API_URL, on the API's "
                        "event stream)")
    p.add_argument("--timeout", type=float, help="with --wait: give up waiting after this many seconds")
    p.add_argument("--json", action="store_true", help="print JSON")
    parsers["status"].add_argument("job", help="our job id (fh_...)")
    parsers["status"].add_argument("--json", action="store_true", help="print JSON")
    parsers["url"].add_argument("job", help="our job id (fh_...)")
    parsers["url"].add_argument("n", type=int, nargs="?", default=0, help="which file of the job (default 0)")
    parsers["url"].add_argument("--expires", type=float, default=3600.0,
                                help="seconds the URL stays valid (default 3600; S3 allows up to 7 days)")
    parsers["list"].add_argument("--status", choices=[str(s) for s in Status], help="only jobs in this status")
    parsers["list"].add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parsers["list"].add_argument("--json", action="store_true", help="print JSON")
    parsers["sweep"].add_argument("--json", action="store_true", help="print JSON")
    parsers["migrate"].add_argument("--check", action="store_true",
                                    help="change nothing; exit 1 if migrations are pending")
    parsers["demo"].add_argument("--jobs", type=int, default=5, help="how many jobs to run (default 5)")
    add_arguments(parsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO (URLs are redacted, see receiver/logs.py); keep the CLI quiet.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _, _, command = COMMANDS[args.command]
    try:
        settings = Settings.from_env()
        result = command(args, settings)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except (SettingsError, CLIError, OutboxCLIError, SinkError) as exc:
        print(f"fluxhook {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (StoreUnavailable, ApiUnavailable) as exc:
        print(f"fluxhook {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


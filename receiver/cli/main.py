"""The `fluxhook` command line: a dispatcher over the COMMANDS table.

Each command is (summary, example, function); command code lives in `cli_*` modules, named
"module:function" and imported only when that command runs (and its arguments are parsed). Exit
codes are in :mod:`receiver.cli.common` (0 ok, 1 job failed / store unavailable, 2 usage or
configuration, 3 wait timed out, 130 Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from receiver.cli.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    ApiUnavailable,
    CLIError,
    WaitTimeout,
    print_rows,
    timed,
)
from receiver.cli.inputs import InputError
from receiver.config.settings import Settings, SettingsError
from receiver.obs.logs import configure_logging
from receiver.sinks import SinkError
from receiver.store import StoreUnavailable
from submitter.dialects import DIALECTS
from submitter.status import TERMINAL, Status

__all__ = ["ApiUnavailable", "CLIError", "WaitTimeout", "build_parser", "main"]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fluxhook")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """`--version`, the installed version looked up only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"fluxhook {_version()}")
        parser.exit()


def _param(text: str) -> tuple[str, Any]:
    """KEY=VALUE, VALUE parsed as JSON when it can be; KEY=@FILE is a local image (see receiver.cli.inputs)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    if raw.startswith("@"):
        return key, raw  # resolved against the provider's image fields at submit (receiver.cli.inputs)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value




def _short(value: Any, limit: int = 120) -> Any:
    """Long strings (inline base64 images) shortened for display; everything else as is."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:40]}...({len(value)} chars)"
    if isinstance(value, dict):
        return {k: _short(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v, limit) for v in value]
    return value


async def _job_view(rt: Any, job_id: str) -> dict[str, Any]:
    job = await rt.store.get_job(job_id)
    if job is None:
        raise CLIError(f"no job {job_id!r} in {rt.settings.db_display}")
    view = _shown(rt, job)
    params = dict(job.params)
    view["prompt"] = params.pop("prompt", None)
    view["params"] = _short(params) or None
    view["metadata"] = job.metadata or None
    view["files"] = [
        {"n": f.n, "path": rt.results.location(f.path) if f.path else None, "size": f.size,
         "sha256": f.sha256, "content_type": f.content_type}
        for f in await rt.store.files(job_id)
    ]
    return view


def result_via(job: Any) -> str | None:
    """How the provider's result reached us: by a verified callback, or by our polling (None if no result)."""
    if job.status not in (Status.SUCCEEDED, Status.STORED) and not job.outputs:
        return None
    return "callback" if job.callback_at is not None else "poll"


def _shown(rt: Any, job: Any) -> dict[str, Any]:
    """What the CLI prints of a job, scrubbed again (rows written before redaction existed); times in ISO 8601 UTC."""
    view = job.public()
    for key in ("error", "note"):
        view[key] = rt.redactor.scrub(view[key], job_id=job.id, provider=job.provider)
    view["via"] = result_via(job)
    return timed(view)


async def _wait(rt: Any, job_id: str, within: float) -> None:
    from receiver.engine.sweep import sweep_once

    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        await sweep_once(rt)
        job = await rt.store.get_job(job_id)
        if job is None or job.status in TERMINAL:
            return
        await asyncio.sleep(1.0)
    raise WaitTimeout(f"job {job_id} not finished after {within:.0f} s; it goes on: `fluxhook status {job_id}`")


def resolve_images(settings: Settings, provider: str, params: dict[str, Any], base_dir: Any = None) -> dict[str, Any]:
    """`@FILE` values of image fields as the provider takes them (receiver.cli.inputs); CLIError names the problem."""
    from receiver.cli.inputs import resolve_params

    shape = settings.provider(provider).dialect.shape.name
    try:
        return resolve_params(params, shape=shape, base_dir=base_dir)
    except InputError as exc:
        raise CLIError(str(exc)) from None


async def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from receiver.engine.jobs import new_job, send_new
    from receiver.engine.runtime import Runtime

    params = resolve_images(settings, args.provider, {"prompt": args.prompt, **dict(args.param or [])})
    if settings.integrations.api_url:
        from receiver.cli import remote as cli_api

        args.param = [(k, v) for k, v in params.items() if k != "prompt"]
        return await cli_api.submit(args, settings)
    settings.require_public()
    events = [e.strip() for e in args.events.split(",") if e.strip()] if args.events is not None else None
    async with Runtime.open(settings) as rt:
        try:
            job = await new_job(rt, args.provider, args.model, params, events=events)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        try:
            await send_new(rt, job)
            if args.wait:
                await _wait(rt, job.id, args.timeout or settings.job_deadline)
        except asyncio.CancelledError:
            # Ctrl-C: the job is in the ledger and goes on without us (an interrupted submit is settled
            # by the sweep when our lease lapses); say which one before exiting 130.
            print(f"interrupted; job {job.id} goes on: `fluxhook status {job.id}`", file=sys.stderr)
            raise
        view = await _job_view(rt, job.id)
    if args.json:
        print_rows(view, True)
    else:
        print(job.id if not args.wait else view["id"])
        if args.wait or view["status"] in TERMINAL:
            print_rows(view, False)
    return EXIT_FAILED if view["status"] in TERMINAL - {Status.STORED} else 0


async def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from receiver.engine.runtime import Runtime

    if settings.integrations.api_url:
        from receiver.cli import remote as cli_api

        return await cli_api.status(args, settings)
    async with Runtime.open(settings) as rt:
        print_rows(await _job_view(rt, args.job), args.json)
    return 0


async def _cmd_url(args: argparse.Namespace, settings: Settings) -> int:
    from receiver.engine.runtime import Runtime

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
    from receiver.engine.runtime import Runtime

    if settings.integrations.api_url:
        from receiver.cli import remote as cli_api

        return await cli_api.list_jobs(args, settings)
    async with Runtime.open(settings) as rt:
        jobs = await rt.store.list_jobs(Status(args.status) if args.status else None, args.limit)
        views = [_shown(rt, j) for j in jobs]
    print_rows(views, args.json)
    return 0


async def _cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    from receiver.engine.runtime import Runtime
    from receiver.engine.sweep import sweep_once

    async with Runtime.open(settings) as rt:
        report = await sweep_once(rt)
    print_rows(report.as_dict(), args.json)
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from receiver.obs.logs import uvicorn_log_config
    from receiver.serve.server import run
    from receiver.web.app import create_app

    settings.require_public()
    run(create_app(settings), settings, host=args.host, port=args.port, log_level=args.log_level,
        log_config=uvicorn_log_config(settings.log_format))
    return 0


async def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from receiver.store import open_store, schema_behind
    from receiver.store.sql import LATEST

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


SIMULATE_HELP = """\
what the simulator does to a job is chosen by its prompt: a rule (POST /_sim/rules with
{"prompt_contains": "lost", "drop": true, ...}: the text, then fault fields; first match wins)
gives jobs whose prompt contains the text these faults (submitter.simulator.Faults); other jobs
complete normally:

  drop            send no callbacks at all (the job is rescued by polling)
  duplicate N     send the terminal callback N times, concurrently
  delay S         extra seconds between completion and the terminal callback
  reorder         follow the terminal callback with a stale "Pending" one
  bad_signature   sign callbacks with a wrong secret
  signature       "hmac" (X-BFL-Signature), "echo" (X-Webhook-Secret) or "none"
  progress        send a "processing" callback before the terminal one
  submit_errors   reject the rule's first submits with these HTTP statuses, e.g. [429, 503]
  outcome         "ready", "error", "request_moderated", "content_moderated"
  webhook_shape   answer submits like webhook mode: no polling_url
  expired_url     the first signed URL handed out is already expired
  slow_download   serve downloads at this many bytes per second
  runtime S       seconds from accept to done (default 0.05)
  image_format    "png" or "jpeg";  image_size: pad the image to at least this many bytes
  outputs N, output_list, drop_completed   (Replicate shapes only)

GET /_sim/stats shows per-task counters (submits, polls, callbacks, downloads). e.g.
  curl -s 127.0.0.1:8900/_sim/rules -d '{"prompt_contains": "lost", "drop": true}'"""


def simulate_env(host: str, port: int) -> list[str]:
    """What to export so fluxhook sends every provider's jobs to a simulator at host:port."""
    url = f"http://{host}:{port}"
    return [
        f"export FLUXHOOK_BFL_URL={url} FLUXHOOK_DEERAPI_URL={url} FLUXHOOK_COMETAPI_URL={url}"
        f" FLUXHOOK_REPLICATE_URL={url}",
        "export BFL_API_KEY=sim DEERAPI_KEY=sim COMETAPI_KEY=sim REPLICATE_API_TOKEN=sim   # any value",
        f"export FLUXHOOK_DOWNLOAD_HOSTS={host} FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE=1 FLUXHOOK_DOWNLOAD_ALLOW_HTTP=1",
        "export FLUXHOOK_PUBLIC_URL=http://127.0.0.1:8000 FLUXHOOK_ALLOW_HTTP=1"
        " FLUXHOOK_SECRET_KEY=$(openssl rand -hex 32)",
        "# then, in another shell: fluxhook serve --port 8000",
    ]


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from submitter.simulator import run_simulator

    print(f"simulator listening on http://{args.host}:{args.port} (BFL, DeerAPI, CometAPI and Replicate shapes)")
    print("point fluxhook at it:")
    for line in simulate_env(args.host, args.port):
        print(f"  {line}")
    sys.stdout.flush()
    run_simulator(host=args.host, port=args.port)
    return 0


async def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from receiver.cli.demo import run_demo

    return await run_demo(settings, jobs=args.jobs, keep=args.keep)


#: name: (summary, example, function or "module:function" for a command in another module).
COMMANDS: dict[str, tuple[str, str, Any]] = {
    "serve": (
        "run the receiver, with the polling sweep and downloads in-process",
        "FLUXHOOK_PUBLIC_URL=https://hooks.example.com FLUXHOOK_SECRET_KEY=... fluxhook serve --port 8000",
        _cmd_serve,
    ),
    "submit": (
        "record a job, send it to a provider with its own webhook, print our job id",
        'fluxhook submit --provider bfl --model flux-kontext-pro --prompt "make it snow" '
        "--param input_image=@photo.png --wait",
        _cmd_submit,
    ),
    "batch": (
        "submit every line of a JSON Lines or CSV file (resumable), with a progress display; exit 1 if any failed",
        'fluxhook batch prompts.jsonl   # lines like {"provider": "bfl", "model": "flux-dev", "prompt": "a fox",'
        ' "params": {"seed": 1}}',
        "receiver.cli.batch:run",
    ),
    "status": ("show one job (prompt, params, how its result came) and its files",
               "fluxhook status fh_0123abcd... --json", _cmd_status),
    "list": ("list recent jobs", "fluxhook list --status failed --json", _cmd_list),
    "url": (
        "print a time-limited download URL for a stored result file (a local folder: its path)",
        "fluxhook url fh_0123abcd... 0 --expires 600",
        _cmd_url,
    ),
    "events": (
        "a job's timeline: created, submitted, each callback (with its id and verdict), outbox events, deliveries",
        "fluxhook events fh_0123abcd...   # then: fluxhook replay 42",
        "receiver.cli.ops:events",
    ),
    "cancel": ("cancel a job (ours at once; the provider's task where it can)", "fluxhook cancel fh_0123abcd...",
               "receiver.cli.ops:cancel"),
    "retry": (
        "download again a job whose download failed or expired after the provider delivered (re-polls fresh URLs)",
        "fluxhook retry fh_0123abcd... --timeout 120",
        "receiver.cli.ops:retry",
    ),
    "replay": (
        "apply a kept callback again through the normal parse+apply path (harmless: the state machine decides)",
        "fluxhook replay 42   # ids from `fluxhook events JOB`",
        "receiver.cli.ops:replay",
    ),
    "report": (
        "reconciliation per provider: submitted, stored, failed, paid but not delivered, rescued by poll...",
        "fluxhook report --since 24h --csv > report.csv",
        "receiver.cli.ops:report",
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
        "run the built-in provider simulator alone (BFL, DeerAPI, CometAPI and Replicate shapes)",
        "fluxhook simulate --port 8900   # prints the FLUXHOOK_* variables to point fluxhook at it",
        _cmd_simulate,
    ),
    "demo": (
        "run receiver and simulator on loopback in a throwaway folder, submit a few jobs, show the stored files",
        "fluxhook demo --keep ./demo-run",
        _cmd_demo,
    ),
    "deliveries": (
        "events owed to sinks, and how each delivery went",
        "fluxhook deliveries --failed --attempts   # dead deliveries with every attempt",
        "receiver.cli.outbox:deliveries",
    ),
    "redeliver": (
        "deliver an event again to every sink that takes it, or every dead delivery",
        "fluxhook redeliver evt_5f0c...   # or: fluxhook redeliver --failed --now",
        "receiver.cli.outbox:redeliver",
    ),
    "sinks": (
        "configured event sinks, their state, and --enable after a 410",
        "fluxhook sinks --enable webhook:1a2b3c4d5e6f",
        "receiver.cli.outbox:sinks",
    ),
}


def _module_of(command: str) -> str | None:
    """The module holding a command's code and arguments (`add_arguments(parsers)`); None: this one."""
    target = COMMANDS[command][2]
    return target.partition(":")[0] if isinstance(target, str) else None


def _function(command: str) -> Any:
    target = COMMANDS[command][2]
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command`, only that command's arguments besides this module's
    own commands' (other command modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="fluxhook",
        description="Submit FLUX image jobs with per-job webhooks, receive verified callbacks, keep every result.",
        epilog=f"Settings come from FLUXHOOK_* environment variables; see README.md.\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (summary, example, _) in COMMANDS.items():
        extra = f"\n\n{SIMULATE_HELP}" if name == "simulate" else ""
        parsers[name] = sub.add_parser(
            name, help=summary, description=summary, epilog=f"example:\n  {example}{extra}\n\n{EXIT_CODES_HELP}",
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
                   help="extra request field; VALUE is parsed as JSON when it can be (repeatable); "
                        "KEY=@FILE sends a local PNG/JPEG/WebP/GIF for an image field (BFL: base64; "
                        "Replicate: a data: URI); @@ for a literal @")
    p.add_argument("--events", metavar="LIST",
                   help="Replicate providers: webhook events, from start,output,logs,completed "
                        "(default start,completed)")
    p.add_argument("--wait", action="store_true",
                   help="wait until the job finishes (sweeping meanwhile; with FLUXHOOK_API_URL, on the API's "
                        "event stream); exit 3 if --timeout passes first, 130 on Ctrl-C (the job goes on)")
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
    parsers["demo"].add_argument("--keep", metavar="DIR",
                                 help="put the demo's database and results here (default: a new temporary folder, "
                                      "kept and printed); never your FLUXHOOK_DB / FLUXHOOK_RESULTS")
    modules = {_module_of(name) for name in ([command] if command in COMMANDS else COMMANDS)} - {None}
    for module in sorted(modules):  # type: ignore[type-var]
        importlib.import_module(module).add_arguments(parsers)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in `argv`: its first word that is not an option (the top-level options take no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO (URLs are redacted, see receiver/obs/logs.py); keep the CLI quiet.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = _function(args.command)
    try:
        settings = Settings.from_env()
        configure_logging(settings)
        result = command(args, settings)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except (SettingsError, CLIError, SinkError, InputError) as exc:
        print(f"fluxhook {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WaitTimeout as exc:
        print(f"fluxhook {args.command}: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (StoreUnavailable, ApiUnavailable) as exc:
        print(f"fluxhook {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

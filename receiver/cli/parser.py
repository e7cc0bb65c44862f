"""The `fluxhook` command line: every command's arguments, and finding a command's code.

Parsing loads no command's code: the arguments of every command are here, and the command's own
module (named in :data:`receiver.cli.commands.COMMANDS`) is imported by :func:`command_function`
only once the command line is parsed, for cold start.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from receiver.cli.commands import COMMANDS, SIMULATE_HELP
from receiver.cli.common import EXIT_CODES_HELP
from submitter.dialects import DIALECTS
from submitter.status import Status

__all__ = ["build_parser", "command_function"]

Parsers = dict[str, argparse.ArgumentParser]


def _version() -> str:
    # importlib.metadata is slow to import: loaded only when --version is asked for (cold start).
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


def command_function(command: str) -> Callable[..., Any]:
    """The code of `command`, its module imported now (and only now: cold start)."""
    module, _, name = COMMANDS[command][2].partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


def _servers(parsers: Parsers) -> None:
    for name in ("serve", "simulate", "dev"):
        parsers[name].add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parsers["serve"].add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parsers["serve"].add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    parsers["simulate"].add_argument("--port", type=int, default=8900, help="port (default 8900)")
    parsers["dev"].add_argument("--port", type=int, default=8000, help="the receiver's port (default 8000)")
    parsers["dev"].add_argument("--sim-port", type=int, default=8900, help="the simulator's port (default 8900)")
    parsers["dev"].add_argument("--data", metavar="DIR",
                                help="the development ledger, results and key (default: the dev folder in the "
                                     "per-user data directory, as `fluxhook simulate` uses); never your FLUXHOOK_DB")
    parsers["demo"].add_argument("--jobs", type=int, default=5, help="how many jobs to run (default 5)")
    parsers["demo"].add_argument("--keep", metavar="DIR",
                                 help="put the demo's database and results here (default: a new temporary folder, "
                                      "kept and printed); never your FLUXHOOK_DB / FLUXHOOK_RESULTS")


def _jobs(parsers: Parsers) -> None:
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
    parsers["status"].add_argument("--full", action="store_true",
                                   help="the whole prompt (by default one over 200 characters is cut, ending in …)")
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


def _batch(parsers: Parsers) -> None:
    p = parsers["batch"]
    p.add_argument("file", help="JSON Lines (.jsonl, any other name) or CSV (.csv, with a header row)")
    p.add_argument("--check", action="store_true", help="validate every line and exit; submit nothing")
    p.add_argument("--timeout", type=float,
                   help="stop waiting after this many seconds (exit 3; the jobs go on, run again to follow)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between sweeps while waiting (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON line per job at the end")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again (as new jobs) the lines whose job ended otherwise than stored; stored lines "
                        "are kept, unfinished ones followed")


def _ops(parsers: Parsers) -> None:
    for name in ("events", "cancel", "retry"):
        parsers[name].add_argument("job", help="our job id (fh_...)")
    parsers["events"].add_argument("--json", action="store_true", help="print JSON")
    p = parsers["retry"]
    p.add_argument("--no-wait", action="store_true", help="reopen and return; a running serve or sweep downloads")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds (exit 3; it goes on)")
    p.add_argument("--json", action="store_true", help="print JSON")
    parsers["replay"].add_argument("event", help="a kept callback's id (a number, from `fluxhook events JOB`)")
    p = parsers["report"]
    p.add_argument("--since", help="only jobs created since: ISO 8601 (2026-01-31T00:00Z) or a duration (24h, 7d)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON")
    form.add_argument("--csv", action="store_true", help="print CSV (one row per provider, then total)")


def _outbox(parsers: Parsers) -> None:
    p = parsers["deliveries"]
    p.add_argument("--failed", action="store_true", help="only dead deliveries")
    p.add_argument("--state", choices=("pending", "delivered", "dead"), help="only deliveries in this state")
    p.add_argument("--event", help="only this event's deliveries (evt_...)")
    p.add_argument("--attempts", action="store_true", help="show every attempt (time, status, latency, error)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p = parsers["redeliver"]
    p.add_argument("event", nargs="?", help="event id (evt_...)")
    p.add_argument("--failed", action="store_true", help="every dead delivery")
    p.add_argument("--now", action="store_true", help="run one relay pass now instead of waiting for one")
    p = parsers["sinks"]
    p.add_argument("--enable", metavar="NAME", help="enable a sink disabled by a 410 Gone")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (no command's code is imported)."""
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
    for add in (_servers, _jobs, _batch, _ops, _outbox):
        add(parsers)
    return parser

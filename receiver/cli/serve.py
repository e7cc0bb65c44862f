"""`fluxhook serve`: the receiver under uvicorn, with the polling sweep and downloads in-process
(logging is already set up by receiver/cli/main.py, as for every command). It refuses to listen beyond
loopback with /metrics unprotected (receiver/serve/exposure.py), and on an address it cannot listen on
(a port in use: exit 2, before anything starts); it says at start which database and results location it
uses; Ctrl-C once drains, twice stops at once (receiver/serve/lifecycle.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from receiver.cli.common import EXIT_FAILED, CLIError
from receiver.config.settings import Settings
from receiver.obs.logs import uvicorn_log_config
from receiver.results import check_at_start
from receiver.serve.exposure import require_protected_metrics
from receiver.serve.lifecycle import CannotListen, NotStarted, run
from receiver.web.app import create_app

__all__ = ["serve"]

log = logging.getLogger("fluxhook.serve")


def serve(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_public()
    require_protected_metrics(settings, args.host)  # not beyond loopback with /metrics open to all
    settings.db_to_open()  # a ledger left in the working directory: refused here, before the server starts
    log.info("database %s, results %s", settings.db_display, settings.results_display,
             extra={"event": "serve-start"})
    asyncio.run(check_at_start(settings))  # a bucket that does not exist: refused (exit 2); else warned
    try:
        run(create_app(settings), settings, host=args.host, port=args.port, log_level=args.log_level,
            log_config=uvicorn_log_config(settings.log_format))
    except CannotListen as exc:
        fix = "set --port or stop the other process" if exc.in_use else "set --host / --port"
        raise CLIError(f"{exc} ({fix})") from None
    except NotStarted as exc:
        print(f"fluxhook serve: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0

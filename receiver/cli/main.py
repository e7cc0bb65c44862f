"""The `fluxhook` command (`fluxhook = receiver.cli.main:main`; `python -m receiver.cli` runs it too).

The commands are in receiver/cli/commands.py, their arguments in receiver/cli/parser.py, and each
command's code in its own module, imported only when it runs. Exit codes are in
:mod:`receiver.cli.common` (0 ok, 1 job failed / store unavailable, 2 usage or configuration,
3 wait timed out, 130 Ctrl-C).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from receiver.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    ApiUnavailable,
    CLIError,
    WaitTimeout,
)
from receiver.cli.inputs import InputError
from receiver.cli.parser import build_parser, command_function
from receiver.config.settings import SettingsError
from receiver.obs.logs import settings_for_entry_point
from receiver.sinks import SinkError
from receiver.store import StoreUnavailable

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO (URLs are redacted, see receiver/obs/logs.py); keep the CLI quiet.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = command_function(args.command)
    try:
        settings = settings_for_entry_point()
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

"""The command line every ratio benchmark shares: `python -m bench.NAME [tiny|full|--tiny]`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any


def main(run: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
    """Run one benchmark at the size named on the command line and print its result as JSON."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM as on Ctrl-C
    args = sys.argv[1:]
    size = "tiny" if "--tiny" in args or "tiny" in args else "full"
    try:
        result = asyncio.run(run(size))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped and removed", file=sys.stderr)
        raise SystemExit(130) from None
    print(json.dumps(result, indent=2))

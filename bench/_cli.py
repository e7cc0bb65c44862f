"""The command line every bench module shares.

A ratio benchmark runs as `python -m bench.NAME [tiny|full|--tiny]` through :func:`main`; a module
with options of its own builds them on :func:`parser`; a helper module that runs nothing by itself
answers `--help` through :func:`describe`. Each one's docstring is its `--help` text, and `--help`
(or `-h`) prints it and exits 0 before anything is started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

SIZES = ("tiny", "full")


def _program() -> tuple[str | None, str | None]:
    """The running module's `python -m` name and docstring."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None and spec.name else None
    return prog, getattr(main_module, "__doc__", None)


def parser(doc: str | None = None, *, prog: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser named after the running module (`python -m bench.NAME`), `doc` (by
    default the running module's docstring) as its description, laid out as written."""
    running, running_doc = _program()
    return argparse.ArgumentParser(
        prog=prog or running, description=doc if doc is not None else running_doc, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def size_of(argv: Sequence[str] | None = None, doc: str | None = None) -> str:
    """The size named on the command line: `tiny` (positional or `--tiny`) or `full` (the default)."""
    p = parser(doc, epilog="Every headline figure is a ratio against a baseline measured in the same run."
                           " All benchmarks at once, with the results table: python -m bench --help")
    p.add_argument("size", nargs="?", choices=SIZES, default="full",
                   help="tiny: a smoke-test run of seconds; full (default): the sizes the figures are quoted at")
    p.add_argument("--tiny", action="store_true", help="the same as `tiny`")
    args = p.parse_args(argv)
    return "tiny" if args.tiny else args.size


def main(run: Callable[[str], Awaitable[dict[str, Any]]], argv: Sequence[str] | None = None) -> None:
    """Run one benchmark at the size named on the command line and print its result as JSON.

    `--help` prints the benchmark module's docstring and exits 0 without running anything."""
    module = sys.modules.get(getattr(run, "__module__", "") or "")
    size = size_of(argv, getattr(module, "__doc__", None))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM as on Ctrl-C
    try:
        result = asyncio.run(run(size))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped and removed", file=sys.stderr)
        raise SystemExit(130) from None
    print(json.dumps(result, indent=2))


def describe(doc: str | None = None, argv: Sequence[str] | None = None) -> None:
    """The command line of a module the benchmarks use but that is no benchmark itself: `--help`
    says what it is (exit 0); anything else says there is nothing to run (exit 2)."""
    p = parser(doc, epilog="This module runs nothing by itself. The benchmarks: python -m bench --help")
    p.parse_args(argv)
    p.exit(2, f"{p.prog}: nothing to run here (see --help); the benchmarks: python -m bench --help\n")


if __name__ == "__main__":
    describe()

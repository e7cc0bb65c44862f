"""Run the benchmarks and write the results table (Markdown and JSON).

    python -m bench                 # every benchmark, full size (about 20 minutes)
    python -m bench --tiny          # every benchmark at a smoke-test size (CI)
    python -m bench --only ingest --only polling

Every headline figure is a ratio against a baseline measured in the same run.
Results go to bench/results/latest.json and bench/results/latest.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from bench import _cli

BENCHMARKS = {
    "ingest": "bench.ingest",
    "polling": "bench.polling",
    "downloads": "bench.downloads",
    "sweep": "bench.sweep_cost",
    "cold_start": "bench.cold_start",
    "outbox": "bench.outbox",
    "metrics": "bench.metrics_cost",
    "ui": "bench.ui_load",
    "memory": "bench.memory",
    "listing_memory": "bench.listing_memory",
}
RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "system": platform.platform(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    where = f"{m['cpus']} cores ({m['cpu']}), Python {m['python']}"
    lines = [f"Measured {m['date']} on {where} ({results['size']} size).", ""]
    lines += ["| benchmark | metric | fluxhook | baseline | ratio | note |", "|---|---|---|---|---|---|"]
    for bench in results["benchmarks"]:
        if not bench["rows"]:
            lines.append(f"| {bench['name']} | skipped | | | | {bench['environment'].get('skipped', '')} |")
        for row in bench["rows"]:
            lines.append(f"| {bench['name']} | {row['metric']} | {_cell(row['value'])} {row['unit']} | "
                         f"{_cell(row['baseline'])} | {_cell(row['ratio'])} | {row['note']} |")
    return "\n".join(lines) + "\n"


async def main(argv: list[str] | None = None) -> int:
    parser = _cli.parser(__doc__, prog="python -m bench")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds, not minutes)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for latest.json and latest.md")
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "full"
    results: dict[str, Any] = {"machine": machine(), "size": size, "benchmarks": []}
    for name in args.only or list(BENCHMARKS):
        print(f"bench: {name} ({size})...", file=sys.stderr, flush=True)
        module = importlib.import_module(BENCHMARKS[name])
        results["benchmarks"].append(await module.run(size))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "latest" if size == "full" else "tiny"
    previous = args.out / f"{stem}.json"
    if args.only and previous.exists():
        # A partial run replaces its own benchmarks in the last full table and keeps the others.
        kept = json.loads(previous.read_text())
        fresh = {b["name"] for b in results["benchmarks"]}
        others = [b for b in kept["benchmarks"] if b["name"] not in fresh]
        results["benchmarks"] = [*others, *results["benchmarks"]]
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

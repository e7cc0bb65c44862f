"""What `fluxhook events` and `fluxhook report` print, the same from the database (receiver/cli/ops.py) and
through FLUXHOOK_API_URL (receiver/cli/remote_ops.py); and `--since`, as both read it."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import UTC, datetime
from typing import Any

from receiver.cli.common import CLIError
from receiver.engine.report import COLUMNS
from submitter.dialects import DIALECTS

__all__ = ["print_canceled", "print_report", "print_timeline", "since"]


def since(text: str | None) -> float | None:
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


def print_timeline(rows: list[dict[str, Any]], status: str, error: str | None, as_json: bool) -> None:
    """A job's timeline (times already ISO 8601), then its status now."""
    if as_json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return
    for row in rows:
        ident = f"  [{row['id']}]" if row.get("id") is not None else ""
        print(f"{row['at']}  {row['kind']:<9} {row['detail']}{ident}")
    print(f"now: {status}" + (f" ({error})" if error else ""))
    if any(r["kind"] == "callback" for r in rows):
        print("replay a callback: `fluxhook replay ID` (the number in brackets)")


def print_report(data: dict[str, Any], *, as_json: bool, as_csv: bool) -> None:
    """The report (receiver.engine.report.report's JSON) as JSON, CSV or a table."""
    rows = data["providers"]
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    if as_csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        print(buf.getvalue(), end="")
        return
    print(f"since {data['since'] or 'the beginning'}")
    if not rows:
        print("no jobs")
        return
    width = max(len(c) for c in COLUMNS)
    names = [r["provider"] for r in rows]
    print(" " * width + "  " + "  ".join(f"{n:>10}" for n in names))
    for column in COLUMNS[1:]:
        print(f"{column:<{width}}  " + "  ".join(f"{r.get(column, '-')!s:>10}" for r in rows))
    print("orphan callbacks: not recorded (a callback for an unknown job is answered 404 and kept nowhere)")


def print_canceled(job_id: str, provider: str, provider_job_id: str | None) -> None:
    """What `cancel` says, on the database and through the API alike; on stderr, that a provider with no
    cancel endpoint (its dialect's `cancel_path`) may still run the job it was sent, and bill it."""
    print(f"{job_id} canceled" + ("" if provider_job_id else " (it had no provider task yet)"))
    dialect = DIALECTS.get(provider)
    if provider_job_id and dialect is not None and dialect.cancel_path is None:
        print(f"fluxhook cancel: {provider} has no cancel endpoint: the provider may still run the job and "
              "bill it (fluxhook ignores its result)", file=sys.stderr)

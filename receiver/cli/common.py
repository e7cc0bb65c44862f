"""What every `fluxhook` command module shares: errors, exit codes, printing.

Exit codes (documented in `fluxhook --help` and the README):

    0    ok
    1    a job failed (or a batch had failures), or the store / API is unavailable
    2    usage or configuration error (bad arguments, bad settings, bad batch lines, unknown job)
    3    waiting timed out (the job goes on: `fluxhook status ID`)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import json
from typing import Any

from receiver.store import iso

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_TIMEOUT", "EXIT_USAGE", "ApiUnavailable", "CLIError",
    "WaitTimeout", "print_rows", "timed",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "exit codes: 0 ok; 1 a job failed, or the store/API is unavailable; 2 usage or configuration error; "
    "3 waiting timed out (the job goes on); 130 interrupted (Ctrl-C)"
)


class CLIError(Exception):
    """A problem to report on stderr with exit status 2."""


class WaitTimeout(Exception):
    """`--wait` gave up: exit status 3 (the job goes on)."""


class ApiUnavailable(Exception):
    """The fluxhook API (FLUXHOOK_API_URL) did not answer or said "try later": exit status 1, like a down store."""


#: Keys holding epoch seconds in what the CLI prints: shown as ISO 8601 UTC.
TIME_KEYS = frozenset({
    "created_at", "updated_at", "submitted_at", "callback_at", "deadline_at", "received_at", "at", "next_check_at",
    "delivered_at", "next_at",
})


def timed(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with its epoch-second times as ISO 8601 UTC (`receiver.store.iso`)."""
    return {k: iso(v) if k in TIME_KEYS and isinstance(v, int | float) else v for k, v in row.items()}


def print_rows(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        if isinstance(row, dict):
            print("  ".join(f"{k}={_text(v)}" for k, v in row.items() if v is not None and k != "files"))
            for f in row.get("files", []):
                print(f"    file {f['n']}: {f['location'] or '(pending)'}  {f['size'] or ''}  {f['sha256'] or ''}")
        else:
            print(row)


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)

"""`fluxhook batch`'s progress display: queued / running / stored / failed counts, rate and ETA."""

from __future__ import annotations

import sys
import time
from collections import Counter

from submitter.status import Status

__all__ = ["BatchProgress", "bucket"]


def bucket(status: Status) -> str:
    """Which count of the display a job in `status` is in: queued, running, stored or failed."""
    if status == Status.QUEUED:
        return "queued"
    if status in (Status.SUBMITTED, Status.RUNNING, Status.SUCCEEDED):
        return "running"
    return "stored" if status == Status.STORED else "failed"


class BatchProgress:
    """The rich progress display on stderr (a plain line per change when stderr is no terminal)."""

    def __init__(self, total: int) -> None:
        # rich is slow to import: loaded when a batch starts waiting, not for `--check` or a bad file (cold start).
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.started = time.monotonic()
        self.total = total
        self.last = ""
        self.progress = Progress(
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(), console=self.console, transient=False, disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task("batch", total=total, counts="")

    def __enter__(self) -> BatchProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, counts: Counter[str]) -> None:
        done = counts["stored"] + counts["failed"]
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - done) / rate:.0f} s" if rate > 0 and done < self.total else "-"
        text = (f"queued {counts['queued']}  running {counts['running']}  stored {counts['stored']}  "
                f"failed {counts['failed']}  {rate * 60:.1f}/min  ETA {eta}")
        self.progress.update(self.task, completed=done, counts=text)
        if not self.console.is_terminal and text.split("  ETA")[0] != self.last:
            self.last = text.split("  ETA")[0]
            print(f"batch: {done}/{self.total}  {text}", file=sys.stderr)

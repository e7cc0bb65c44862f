"""`fluxhook batch`'s wait: sweep and show queued / running / stored / failed counts, rate and ETA until every
job is finished.

The ETA counts the jobs still running by how long they have run, not only the finished ones' pace: a slow
job raises it while it runs (a batch of quick jobs with one slow one does not say "1 s" for minutes). See
:func:`eta`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from receiver.cli.common import WaitTimeout
from receiver.engine.runtime import Runtime
from receiver.engine.sweep import sweep_once
from receiver.store import Job
from submitter.status import TERMINAL, Status

__all__ = ["BatchProgress", "bucket", "eta", "follow", "outcomes"]


def bucket(status: Status) -> str:
    """Which count of the display a job in `status` is in: queued, running, stored or failed."""
    if status == Status.QUEUED:
        return "queued"
    if status in (Status.SUBMITTED, Status.RUNNING, Status.SUCCEEDED):
        return "running"
    return "stored" if status == Status.STORED else "failed"


def eta(finished: Sequence[float], running: Sequence[float], queued: int) -> float | None:
    """Seconds until the last job is done, or None before anything tells (nothing finished or running).

    `finished`: how long each finished job took (from its submit); `running`: how long each running job has
    run so far; `queued`: how many wait to be sent. A running job still needs, on average, what the finished
    jobs that ran longer than it needed beyond that point; if none ran that long, as long again as it has
    run. A queued job needs the average of every duration seen, the running jobs' so far included (so slow
    ones count while they run). Jobs run side by side as many at once as run now."""
    known = [*finished, *running]
    if not known:
        return None

    def still_needs(elapsed: float) -> float:
        longer = [d - elapsed for d in finished if d > elapsed]
        return sum(longer) / len(longer) if longer else elapsed

    left = [still_needs(e) for e in running]
    average = sum(known) / len(known)
    lanes = max(1, len(running))
    return max(max(left, default=0.0), (sum(left) + queued * average) / lanes)


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

    def update(self, counts: Counter[str], finished: Sequence[float] = (), running: Sequence[float] = ()) -> None:
        """`counts` by :func:`bucket`; `finished` and `running` as :func:`eta` takes them."""
        done = counts["stored"] + counts["failed"]
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = eta(finished, running, counts["queued"])
        shown = "-" if left is None or done >= self.total else f"{left:.0f} s"
        text = (f"queued {counts['queued']}  running {counts['running']}  stored {counts['stored']}  "
                f"failed {counts['failed']}  {rate * 60:.1f}/min  ETA {shown}")
        self.progress.update(self.task, completed=done, counts=text)
        if not self.console.is_terminal and text.split("  ETA")[0] != self.last:
            self.last = text.split("  ETA")[0]
            print(f"batch: {done}/{self.total}  {text}", file=sys.stderr)


def _took(job: Job, now: float) -> float | None:
    """How long `job` ran (finished) or has run (running), from its submit; None if never sent."""
    if job.submitted_at is None:
        return None
    return max(0.0, (job.updated_at if job.status in TERMINAL and job.updated_at else now) - job.submitted_at)


async def follow(rt: Runtime, ids: Sequence[str], *, interval: float, within: float, again: str) -> None:
    """Sweep every `interval` seconds, showing progress, until every job of `ids` is finished; WaitTimeout
    after `within` seconds (the jobs go on: `again` is the command that follows them again)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    jobs: dict[str, Job] = {}
    with BatchProgress(len(ids)) as display:
        while True:
            await sweep_once(rt)
            for job_id in ids:
                if job_id not in jobs or jobs[job_id].status not in TERMINAL:
                    job = await rt.store.get_job(job_id)
                    if job is not None:
                        jobs[job_id] = job
            now = rt.clock()
            took = {job_id: _took(job, now) for job_id, job in jobs.items()}
            display.update(Counter(bucket(j.status) for j in jobs.values()),
                           finished=[t for i, t in took.items() if t is not None and jobs[i].status in TERMINAL],
                           running=[t for i, t in took.items() if t is not None and jobs[i].status not in TERMINAL])
            if all(j.status in TERMINAL for j in jobs.values()):
                return
            if loop.time() >= end:
                raise WaitTimeout(f"{sum(j.status not in TERMINAL for j in jobs.values())} job(s) not finished; "
                                  f"they go on: run `{again}` again to follow them")
            await asyncio.sleep(interval)


def outcomes(lines: Sequence[Any], jobs: Mapping[str, Any], *, as_json: bool) -> list[int]:
    """A batch's end, as `batch` prints it on the database and through the API alike: each line's job (with
    --json) or each line not stored (stdout), then the count by status (stderr). `lines` have `number` and
    `job_id`; `jobs` (a ledger Job or an API JobView, by id) have `id`, `status`, `error`. The numbers of the
    lines not stored."""
    failed = []
    for line in lines:
        job = jobs.get(line.job_id or "")
        if job is None:
            continue
        if as_json:
            print(json.dumps({"line": line.number, "id": job.id, "status": str(job.status), "error": job.error}))
        elif job.status != Status.STORED:
            print(f"line {line.number}: {job.id} {job.status}: {job.error or ''}")
        if job.status != Status.STORED:
            failed.append(line.number)
    counts = Counter(str(j.status) for j in jobs.values() if j is not None)
    print(f"{len(lines)} job(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), file=sys.stderr)
    return failed

"""`fluxhook batch FILE` through a fluxhook /v1 API (FLUXHOOK_API_URL) instead of the database.

The file is validated here as on the database (receiver/cli/batch.py does, then hands over). Each line
becomes a job by `POST /v1/jobs` under the line's own Idempotency-Key (the file's path, the line's number
and content), so running the same file again finds the jobs it already made (within
FLUXHOOK_IDEMPOTENCY_TTL) and sends only the lines it never did. The jobs are then followed on one event
stream (`GET /v1/events`): the server's sweep submits them within the providers' caps, nothing is swept
here. The display and the end (lines not stored, exit 1 if any) are those of the database path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from receiver.cli.common import EXIT_FAILED, CLIError, WaitTimeout
from receiver.cli.progress import BatchProgress, bucket, outcomes
from receiver.cli.remote_api import answers, client
from receiver.config.settings import Settings
from submitter.api_client import ApiError, JobView
from submitter.status import Status

__all__ = ["run"]


class Line(Protocol):
    """What is read of a validated batch line (receiver.cli.batch.BatchLine)."""

    number: int
    provider: str
    model: str
    metadata: dict[str, Any]
    events: list[str] | None
    job_id: str | None


L = TypeVar("L", bound=Line)


async def run(args: argparse.Namespace, settings: Settings, path: Path, lines: Sequence[L], *,
              key: Callable[[L], str], params: Callable[[L], dict[str, Any]]) -> int:
    """Record every line's job through the API (`key`: its Idempotency-Key; `params`: what it sends, images
    read and encoded only for that request), then follow them to the end."""
    jobs: dict[str, JobView] = {}
    async with client(settings) as api:
        new = 0
        with answers():
            for line in lines:
                try:
                    job, created = await api.create_once(
                        line.provider, line.model, params(line), events=line.events,
                        metadata={**line.metadata, "batch_line": line.number}, idempotency_key=key(line))
                except ApiError as exc:
                    if exc.status is None or exc.status >= 500:
                        raise
                    raise CLIError(f"{path}:{line.number}: {exc} (the lines before it are recorded: fix it and run "
                                   "the batch again to resume)") from None
                line.job_id, jobs[job.id] = job.id, job
                new += created
        print(f"{path}: {len(lines)} job(s), {new} new, {len(lines) - new} already recorded (resumed); following "
              f"them through {api.base_url}", file=sys.stderr)
        within = args.timeout or settings.job_deadline + settings.download_window
        try:
            with BatchProgress(len(jobs)) as display, answers():
                display.update(_counts(jobs))
                async with asyncio.timeout(within):
                    updates = api.watch(j.id for j in jobs.values() if not j.terminal)
                    async with contextlib.aclosing(updates):
                        async for job in updates:
                            jobs[job.id] = job
                            display.update(_counts(jobs))
        except TimeoutError:
            left = sum(not j.terminal for j in jobs.values())
            raise WaitTimeout(f"{left} job(s) not finished; they go on: run `fluxhook batch {path}` again to "
                              "follow them") from None
        except asyncio.CancelledError:
            print(f"interrupted; the {len(jobs)} recorded job(s) go on. `fluxhook batch {path}` again resumes "
                  "(no line is submitted twice)", file=sys.stderr)
            raise
    return _end(args, lines, jobs)


def _counts(jobs: dict[str, JobView]) -> Counter[str]:
    return Counter(bucket(Status(j.status)) for j in jobs.values())


def _end(args: argparse.Namespace, lines: Sequence[Line], jobs: dict[str, JobView]) -> int:
    """Each line not stored (every line, with --json), a summary on stderr; exit 1 if any failed."""
    failed = outcomes(lines, jobs, as_json=args.json)
    return EXIT_FAILED if failed else 0

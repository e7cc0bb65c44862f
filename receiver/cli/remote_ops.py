"""`fluxhook events|cancel|report` through a fluxhook /v1 API (FLUXHOOK_API_URL) instead of the database.

The same output as on the database (receiver/cli/ops.py, receiver/cli/views.py), from
`GET /v1/jobs/{id}/timeline`, `POST /v1/jobs/{id}/cancel` and `GET /v1/report`. What a key sees is its
scope's (README, Security): a `submit` key's report counts only its own jobs, and its timelines show no
deliveries to the operator's sinks.
"""

from __future__ import annotations

import argparse
import sys

from receiver.cli.common import EXIT_FAILED
from receiver.cli.remote_api import answers, client
from receiver.cli.views import print_canceled, print_report, print_timeline, since
from receiver.config.settings import Settings
from receiver.store import iso
from submitter.api_client import ApiError

__all__ = ["cancel", "events", "report"]


async def events(args: argparse.Namespace, settings: Settings) -> int:
    async with client(settings) as api:
        with answers():
            job, rows = await api.timeline(args.job)
    print_timeline(rows, job.status, job.error, args.json)
    return 0


async def cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 (as on the database) when the job cannot be canceled: it finished otherwise, or is storing results."""
    async with client(settings) as api:
        with answers():
            try:
                job = await api.cancel(args.job)
            except ApiError as exc:
                if exc.code != "not_cancelable":
                    raise
                print(f"fluxhook cancel: {args.job}: {exc.message}", file=sys.stderr)
                return EXIT_FAILED
    print_canceled(job.id, job.provider, job.provider_job_id)
    return 0


async def report(args: argparse.Namespace, settings: Settings) -> int:
    after = since(args.since)
    async with client(settings) as api:
        with answers():
            data = await api.report(iso(after))
    print_report(data, as_json=args.json, as_csv=args.csv)
    return 0

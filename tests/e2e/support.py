"""What the end-to-end tests share: a receiver's environment, waiting for a job, running the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from receiver.store import Job, Store
from submitter.status import TERMINAL, Status

MASTER = "e2e-master-key-0123456789abcdef0123456789"
#: Every wait here is for an event, bounded by this many seconds.
WAIT = 30.0


def env_for(tmp_path: Path, sim_url: str, public_url: str, *, db: str | None = None) -> dict[str, str]:
    """A receiver's environment: every provider at the simulator, the ledger in `tmp_path` (a SQLite
    file) unless `db` names another (e.g. a PostgreSQL URL from tests.pg.fresh_schema)."""
    return {
        "FLUXHOOK_PUBLIC_URL": public_url,
        "FLUXHOOK_ALLOW_HTTP": "1",
        "FLUXHOOK_SECRET_KEY": MASTER,
        "FLUXHOOK_DB": db or str(tmp_path / "fluxhook.db"),
        "FLUXHOOK_RESULTS": str(tmp_path / "results"),
        "FLUXHOOK_BFL_URL": sim_url,
        "FLUXHOOK_DEERAPI_URL": sim_url,
        "FLUXHOOK_COMETAPI_URL": sim_url,
        "BFL_API_KEY": "k-bfl",
        "DEERAPI_KEY": "k-deer",
        "COMETAPI_KEY": "k-comet",
        "FLUXHOOK_REPLICATE_URL": sim_url,
        "REPLICATE_API_TOKEN": "r8-test",
        "FLUXHOOK_DOWNLOAD_HOSTS": "127.0.0.1",
        "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE": "1",
        "FLUXHOOK_DOWNLOAD_ALLOW_HTTP": "1",
        "FLUXHOOK_POLL_AFTER": "0.5",
        "FLUXHOOK_POLL_MAX_INTERVAL": "1",
        "FLUXHOOK_SWEEP_INTERVAL": "0.2",
        "FLUXHOOK_MAX_BODY": "4096",
    }


async def wait_for_status(store: Store, job_id: str, until: frozenset[Status] = TERMINAL) -> Job:
    async with asyncio.timeout(WAIT):
        while True:
            job = await store.get_job(job_id)
            if job is not None and job.status in until:
                return job
            await asyncio.sleep(0.05)


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`fluxhook ARGS` in a subprocess: (exit status, stdout, stderr); a signal gives a negative status."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "receiver.cli", *args,
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(2 * WAIT):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()

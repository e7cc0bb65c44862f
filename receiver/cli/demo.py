"""`fluxhook demo`: the whole loop on loopback, with the provider simulator standing in for BFL."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from receiver.cli.ledger import result_via
from receiver.config.integrations import Integrations
from receiver.config.settings import Settings
from receiver.engine.jobs import submit
from receiver.engine.runtime import Runtime
from receiver.obs.logs import configure_logging
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from submitter.client import Provider
from submitter.simulator import Faults, Simulator
from submitter.status import TERMINAL, Status

__all__ = ["demo", "run_demo"]

PROMPTS = [
    ("bfl", "flux-dev", "a red fox in fresh snow, morning light"),
    ("deerapi", "flux-pro-1.1", "a lighthouse at dusk, oil painting"),
    ("cometapi", "flux-pro-1.1-ultra", "a bowl of ramen, studio photo"),
    ("bfl", "flux-2-pro", "a paper boat on a puddle (callback lost: rescued by polling)"),
    ("replicate", "black-forest-labs/flux-schnell", "two owls on a branch, woodcut print (two outputs)"),
]


def demo_folder(keep: str | None) -> Path:
    """Where the demo keeps its database and results: `keep`, or a new temporary folder (kept, so
    the user can look at what it did); never the user's FLUXHOOK_DB or FLUXHOOK_RESULTS."""
    if keep is not None:
        folder = Path(keep).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return Path(tempfile.mkdtemp(prefix="fluxhook-demo-"))


def demo_settings(settings: Settings, sim_url: str, public_url: str, folder: Path | None = None) -> Settings:
    """Point every provider at the simulator and allow loopback everywhere (demo only); with
    `folder`, the ledger and results live there and no configured sink or API is used."""
    if folder is not None:
        settings = settings.with_overrides(
            db=str(folder / "demo.db"), results=folder / "results", results_url=None,
            integrations=Integrations(),
        )
    return settings.with_overrides(
        public_url=public_url,
        allow_http=True,
        secret_key=settings.secret_key or secrets.token_urlsafe(32).encode(),
        providers={name: Provider(p.dialect, sim_url, "demo-key") for name, p in settings.providers.items()},
        download_hosts=("127.0.0.1",),
        download_allow_private=True,
        download_allow_http=True,
        poll_after=1.0,
        poll_min_interval=0.5,
        poll_max_interval=2.0,
        sweep_interval=0.5,
    )


@contextlib.contextmanager
def quiet_logs(level: int = logging.WARNING) -> Iterator[None]:
    """fluxhook's own INFO lines (each sweep's and download pass's summary) left out of the demo's output while
    it runs; warnings and errors still show."""
    logger = logging.getLogger("fluxhook")
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


async def demo(args: argparse.Namespace, settings: Settings) -> int:
    """`fluxhook demo [--jobs N] [--keep DIR]`."""
    with quiet_logs():
        return await run_demo(settings, jobs=args.jobs, keep=args.keep)


async def run_demo(settings: Settings, *, jobs: int = 5, within: float = 60.0, keep: str | None = None) -> int:
    sim = Simulator(default_faults=Faults(runtime=0.3))
    sim.add_rule("callback lost", Faults(drop=True, runtime=0.3))
    sim.add_rule("two outputs", Faults(outputs=2, runtime=0.3))
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        folder = demo_folder(keep)
        settings = demo_settings(settings, sim_url, public_url, folder)
        configure_logging(settings)  # the demo's own settings (its own key): their secrets leave the logs too
        for label, value in (("folder", folder), ("simulator", sim_url), ("receiver", public_url),
                             ("database", settings.db_display), ("results", settings.results)):
            print(f"{label:<10} {value}")
        async with serve_in_background(create_app(settings), sock, settings=settings), Runtime.open(settings) as rt:
            submitted = []
            for i in range(jobs):
                provider, model, prompt = PROMPTS[i % len(PROMPTS)]
                job = await submit(rt, provider, model, {"prompt": prompt, "seed": i})
                print(f"submitted  {job.id}  {provider:<8} {model:<18} {prompt}")
                submitted.append(job.id)
            loop = asyncio.get_running_loop()
            end = loop.time() + within
            pending = set(submitted)
            try:
                await _follow(rt, settings, pending, end)
            except asyncio.CancelledError:
                # Cut short: nothing in the throwaway ledger may wait on the simulator that dies with us.
                with contextlib.suppress(Exception):
                    for job_id in pending:
                        await asyncio.shield(rt.store.finish(job_id, Status.CANCELED, now=rt.clock(),
                                                             reason="demo interrupted"))
                print(f"interrupted; the demo's files are in {folder}")
                raise
            stats = sim.stats()["totals"]
        await sim.aclose()
    print(f"provider calls: {stats}")
    print(f"everything the demo wrote is in {folder}")
    if pending:
        print(f"not finished within {within:.0f} s: {sorted(pending)}")
        return 1
    return 0


async def _follow(rt: Runtime, settings: Settings, pending: set[str], end: float) -> None:
    loop = asyncio.get_running_loop()
    while pending and loop.time() < end:
        for job_id in list(pending):
            job = await rt.store.get_job(job_id)
            if job is not None and job.status in TERMINAL:
                pending.discard(job_id)
                how = f"via={result_via(job)}"  # as `fluxhook status` says it
                for f in await rt.store.files(job_id):
                    path = os.path.join(settings.results, f.path or "")
                    print(f"{job.status:<10} {job_id}  {how:<12}  {path}  {f.size} bytes  "
                          f"sha256 {(f.sha256 or '')[:16]}...")
                if job.status != "stored":
                    print(f"{job.status:<10} {job_id}  {job.error}")
        await asyncio.sleep(0.2)

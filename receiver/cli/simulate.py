"""`fluxhook simulate`: the built-in provider simulator alone, and what to export to point fluxhook at it
(the faults it can inject are in receiver/cli/commands.py's SIMULATE_HELP)."""

from __future__ import annotations

import argparse
import sys

from receiver.config.settings import Settings
from submitter.simulator import run_simulator

__all__ = ["simulate", "simulate_env"]


def simulate_env(host: str, port: int) -> list[str]:
    """What to export so fluxhook sends every provider's jobs to a simulator at host:port."""
    url = f"http://{host}:{port}"
    return [
        f"export FLUXHOOK_BFL_URL={url} FLUXHOOK_DEERAPI_URL={url} FLUXHOOK_COMETAPI_URL={url}"
        f" FLUXHOOK_REPLICATE_URL={url}",
        "export BFL_API_KEY=sim DEERAPI_KEY=sim COMETAPI_KEY=sim REPLICATE_API_TOKEN=sim   # any value",
        f"export FLUXHOOK_DOWNLOAD_HOSTS={host} FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE=1 FLUXHOOK_DOWNLOAD_ALLOW_HTTP=1",
        "export FLUXHOOK_PUBLIC_URL=http://127.0.0.1:8000 FLUXHOOK_ALLOW_HTTP=1"
        " FLUXHOOK_SECRET_KEY=$(openssl rand -hex 32)",
        "# then, in another shell: fluxhook serve --port 8000",
    ]


def simulate(args: argparse.Namespace, settings: Settings) -> int:
    print(f"simulator listening on http://{args.host}:{args.port} (BFL, DeerAPI, CometAPI and Replicate shapes)")
    print("point fluxhook at it:")
    for line in simulate_env(args.host, args.port):
        print(f"  {line}")
    sys.stdout.flush()
    run_simulator(host=args.host, port=args.port)
    return 0

"""`fluxhook dev`: the provider simulator and the receiver together in this one process (like `stripe
listen`), on the development ledger and key `fluxhook simulate` uses (receiver/cli/simulate.py). It
prints what a second shell exports to `fluxhook submit` against them, every value literal. Ctrl-C
stops both: the receiver first (it drains as `serve` does), then the simulator; exit 130."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys

import uvicorn

from receiver.cli.common import EXIT_FAILED, CLIError
from receiver.cli.simulate import dev_folder, dev_key, dev_variables, export_lines
from receiver.config.settings import Settings
from receiver.obs.logs import configure_logging, uvicorn_log_config
from receiver.serve.background import serve_in_background
from receiver.serve.server import uvicorn_config
from receiver.web.app import create_app
from submitter.simulator import Simulator

__all__ = ["dev"]

EXAMPLE = 'fluxhook submit --provider bfl --model flux-dev --prompt "a red fox in fresh snow" --wait'


def _bind(host: str, port: int, option: str) -> socket.socket:
    """A socket bound to host:port (as receiver.serve.background.bind binds), or a CLIError naming the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        return sock
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CLIError(f"port {port} on {host} is in use: choose another with {option}") from None
        raise CLIError(f"cannot listen on {host}:{port} ({exc.strerror}): see {option}") from None


async def dev(args: argparse.Namespace, settings: Settings) -> int:
    folder = dev_folder(settings, args.data)
    key = dev_key(folder)
    sim_sock = _bind(args.host, args.sim_port, "--sim-port")
    try:
        sock = _bind(args.host, args.port, "--port")
    except CLIError:
        sim_sock.close()
        raise
    sim_url = f"http://{args.host}:{sim_sock.getsockname()[1]}"
    public_url = f"http://{args.host}:{sock.getsockname()[1]}"
    variables = dev_variables(folder, key, sim_url, public_url, args.host)
    # This shell's other settings (sinks, API keys, timings) apply too, as they do in the second shell.
    settings = Settings.from_env({**os.environ, **variables})
    configure_logging(settings)  # the development key leaves the logs like any other
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level="info",
                                           log_config=uvicorn_log_config(settings.log_format)))
    async with serve_in_background(Simulator().app, sim_sock):
        receiver = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:  # start-up, watched as serve_in_background does
            if receiver.done():
                break
            await asyncio.sleep(0.01)
        if server.started:
            _announce(folder, sim_url, public_url, variables)
        await receiver
    return 0 if server.started else EXIT_FAILED


def _announce(folder: object, sim_url: str, public_url: str, variables: dict[str, str]) -> None:
    print(f"simulator  {sim_url} (BFL, DeerAPI, CometAPI and Replicate shapes)")
    print(f"receiver   {public_url}")
    print(f"ledger     {folder} (the development ledger, results and key)")
    print("in another shell, paste these, then submit:")
    for line in export_lines(variables):
        print(f"  {line}")
    print(f"  {EXAMPLE}")
    print("Ctrl-C stops both.")
    sys.stdout.flush()

"""`fluxhook simulate`: the built-in provider simulator alone, and what to export to point fluxhook at it
(the faults it can inject are in receiver/cli/commands.py's SIMULATE_HELP).

What it prints is literal, so pasting it into two shells gives both the same values: a development
ledger (`<data dir>/dev`, never the real one: a real job must not be polled at the simulator) and a
development key kept there (`secret-key`, made once), which `fluxhook dev` prints too."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import sys
from pathlib import Path

from receiver.cli.common import CLIError
from receiver.config.settings import Settings
from submitter.simulator import run_simulator

__all__ = ["dev_folder", "dev_key", "dev_variables", "export_lines", "simulate", "simulate_env"]

KEY_FILE = "secret-key"


def dev_folder(settings: Settings, data: str | None = None) -> Path:
    """Where local development keeps its ledger, results and key: `data`, or `<data dir>/dev`."""
    folder = Path(data).expanduser().absolute() if data else settings.data_dir / "dev"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the development folder {folder}: {exc.strerror}") from None
    return folder


def dev_key(folder: Path) -> str:
    """The development FLUXHOOK_SECRET_KEY kept in `folder` (made on first use, readable by its owner only):
    the same in every shell and across restarts, so callbacks of jobs in flight keep matching."""
    path = folder / KEY_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    if len(key) < 32:
        raise CLIError(f"{path} holds no development key (at least 32 characters): remove it to make a new one")
    return key


#: The variables local development sets, one `export` line per group.
GROUPS = (
    ("FLUXHOOK_DB", "FLUXHOOK_RESULTS"),
    ("FLUXHOOK_BFL_URL", "FLUXHOOK_DEERAPI_URL", "FLUXHOOK_COMETAPI_URL", "FLUXHOOK_REPLICATE_URL"),
    ("BFL_API_KEY", "DEERAPI_KEY", "COMETAPI_KEY", "REPLICATE_API_TOKEN"),
    ("FLUXHOOK_DOWNLOAD_HOSTS", "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE", "FLUXHOOK_DOWNLOAD_ALLOW_HTTP"),
    ("FLUXHOOK_PUBLIC_URL", "FLUXHOOK_ALLOW_HTTP", "FLUXHOOK_SECRET_KEY"),
)


def dev_variables(folder: Path, key: str, sim_url: str, public_url: str, host: str) -> dict[str, str]:
    """Every variable local development sets: the simulator for every provider (any API key does), the
    development ledger and key, callbacks to `public_url`."""
    values = [
        (str(folder / "fluxhook.db"), str(folder / "results")),
        (sim_url,) * 4,
        ("sim",) * 4,
        (host, "1", "1"),
        (public_url, "1", key),
    ]
    return {name: value for names, group in zip(GROUPS, values, strict=True)
            for name, value in zip(names, group, strict=True)}


def export_lines(variables: dict[str, str]) -> list[str]:
    """`export` lines setting `variables`, every value literal (quoted where the shell needs it)."""
    return ["export " + " ".join(f"{name}={shlex.quote(variables[name])}" for name in names)
            for names in GROUPS]


def simulate_env(host: str, port: int, *, key: str, folder: Path,
                 public_url: str = "http://127.0.0.1:8000") -> list[str]:
    """What to export so fluxhook sends every provider's jobs to a simulator at host:port."""
    url = f"http://{host}:{port}"
    return [*export_lines(dev_variables(folder, key, url, public_url, host)),
            "# then, in another shell (the same exports): fluxhook serve --port 8000"]


def simulate(args: argparse.Namespace, settings: Settings) -> int:
    folder = dev_folder(settings)
    print(f"simulator listening on http://{args.host}:{args.port} (BFL, DeerAPI, CometAPI and Replicate shapes)")
    print(f"point fluxhook at it (a development ledger and key in {folder}; `fluxhook dev` runs the simulator"
          " and the receiver in one command):")
    for line in simulate_env(args.host, args.port, key=dev_key(folder), folder=folder):
        print(f"  {line}")
    sys.stdout.flush()
    run_simulator(host=args.host, port=args.port)
    return 0

"""Where the ledger and the results live by default: a per-user data directory, the same from every
working directory (XDG Base Directory: `$XDG_DATA_HOME/fluxhook`, else `~/.local/share/fluxhook`).

Older versions defaulted to `./fluxhook.db` and `./results`. A ledger left there is never silently
replaced by an empty one: :func:`left_behind` says what to do (settings.py refuses to open the default
ledger while it applies)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from receiver.config.env import SettingsError

__all__ = ["DB_NAME", "RESULTS_NAME", "data_dir", "left_behind"]

DB_NAME = "fluxhook.db"
RESULTS_NAME = "results"


def data_dir(env: Mapping[str, str]) -> Path:
    """`$XDG_DATA_HOME/fluxhook` (an absolute XDG_DATA_HOME only, as the XDG spec says), else
    `$HOME/.local/share/fluxhook` (HOME from `env`, else the account's home directory)."""
    xdg = env.get("XDG_DATA_HOME") or ""
    if os.path.isabs(xdg):
        return Path(xdg) / "fluxhook"
    home = env.get("HOME") or ""
    if not os.path.isabs(home):
        try:
            home = str(Path.home())
        except (RuntimeError, KeyError):
            raise SettingsError(
                "no home directory for the default FLUXHOOK_DB and FLUXHOOK_RESULTS: set both (or XDG_DATA_HOME)"
            ) from None
    return Path(home) / ".local" / "share" / "fluxhook"


def left_behind(env: Mapping[str, str], data: Path) -> str | None:
    """The refusal to give when FLUXHOOK_DB is unset and the working directory holds a ledger an older
    version made there (`./fluxhook.db`) while the per-user one does not exist yet; else None."""
    if env.get("FLUXHOOK_DB"):
        return None
    found = Path(DB_NAME).absolute()
    if not found.is_file() or (data / DB_NAME).exists():
        return None
    keep = [f"FLUXHOOK_DB={shlex.quote(str(found))}"]
    move = [f"{shlex.quote(DB_NAME)}*"]
    results = Path(RESULTS_NAME).absolute()
    if not env.get("FLUXHOOK_RESULTS") and results.is_dir():
        keep.append(f"FLUXHOOK_RESULTS={shlex.quote(str(results))}")
        move.append(RESULTS_NAME)
    target = shlex.quote(str(data))
    return (
        f"FLUXHOOK_DB is not set and {found} exists: older versions kept the ledger in the working directory, "
        f"the default is now {data / DB_NAME}, the same from every folder. Nothing was opened or created. "
        f"To keep using that ledger, `export {' '.join(keep)}`; or move it once, with fluxhook stopped, "
        f"from {found.parent}: `mkdir -p {target} && mv {' '.join(move)} {target}/`"
    )

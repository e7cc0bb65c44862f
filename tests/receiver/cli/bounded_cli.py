"""`fluxhook` in a child process with a deadline and a memory cap, for inputs that could hang the
CLI (a FIFO) or make it read without end (/dev/zero): a regression then fails the test (a timeout,
or a MemoryError under the cap) instead of hanging the suite or filling the machine's memory."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: Address-space cap for the child: far above what the CLI needs to start and check a few files.
MEMORY_CAP = 1 << 30


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_cli(*argv: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m receiver.cli ARGV` from the repository root; subprocess.TimeoutExpired (the child
    killed) if it has not exited within `timeout` seconds."""
    return subprocess.run([sys.executable, "-m", "receiver.cli", *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, cwd=ROOT, timeout=timeout, check=False,
                          preexec_fn=_cap_memory)

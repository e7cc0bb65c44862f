"""`fluxhook dev` followed literally, in two shells (issue 20, item 1): the first runs `fluxhook dev`
(the simulator and the receiver in one process), the second pastes the exports it printed and the
submit line after them, in another folder, with nothing else in its environment; the job comes back by
its callback. Ctrl-C stops both servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.e2e.support import WAIT

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash") or "/bin/bash"


def _first_shell_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any fluxhook or provider setting, the per-user data under tmp_path."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("FLUXHOOK_", "BFL_", "DEERAPI_", "COMETAPI_", "REPLICATE_"))}
    return keep | {"XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


async def test_dev_in_one_shell_submit_in_another_and_ctrl_c_stops_both(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "home").mkdir()
    with (tmp_path / "dev.log").open("wb") as log:
        dev = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "receiver.cli", "dev", "--port", "0", "--sim-port", "0",
            cwd=tmp_path, env=_first_shell_env(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=log,
        )
    try:
        assert dev.stdout is not None
        printed: list[str] = []
        async with asyncio.timeout(WAIT):
            while not printed or printed[-1] != "Ctrl-C stops both.":
                line = await dev.stdout.readline()
                assert line, f"fluxhook dev stopped: {(tmp_path / 'dev.log').read_text()}"
                printed.append(line.decode().rstrip("\n"))
        text = "\n".join(printed)
        urls = dict(re.findall(r"^(simulator|receiver) +(http://\S+)", text, re.MULTILINE))
        pasted = [line.strip() for line in printed if line.strip().startswith(("export ", "fluxhook submit"))]
        assert len(pasted) == 6 and pasted[-1].startswith("fluxhook submit") and "$(" not in text
        # The second shell: a new bash in another folder, knowing nothing but what it pasted.
        script = "\n".join([f'fluxhook() {{ "{sys.executable}" -m receiver.cli "$@"; }}', *pasted])
        second = await asyncio.create_subprocess_exec(
            BASH, "-c", script, cwd=tmp_path / "elsewhere",
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(2 * WAIT):
            out, err = await second.communicate()
        assert second.returncode == 0, err.decode()
        assert "status=stored" in out.decode() and "via=callback" in out.decode()
        assert not (tmp_path / "elsewhere" / "fluxhook.db").exists() and not (tmp_path / "home" / ".local").exists()
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        async with asyncio.timeout(WAIT):
            assert await dev.wait() == 130
        assert _refused(urls["simulator"]) and _refused(urls["receiver"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            dev.kill()
        await dev.wait()

"""README's "Your first hour", followed literally in two shells.

Each code block of the section is marked `<!-- first-hour: shell 1 -->` or `shell 2`. Shell 1 is where
`fluxhook dev` runs: each of its blocks is typed into a fresh bash (the one before stopped with Ctrl-C, as
the text says), started in the clone. Shell 2 is one bash for the whole walk-through, started in the
clone: it runs `. .venv/bin/activate` and the `export` lines the first `fluxhook dev` printed (the text
says to paste them), then each of its blocks in turn, so what one block sets (`JOB`, a background
endpoint) the next one has. Only the per-user data directory is moved (`XDG_DATA_HOME`, so the walk-through
leaves nothing in the home folder); the ports are the section's own, and a test that finds one taken fails
naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.support import WAIT

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
PORTS = (8000, 8900, 9000)
DONE = "__first_hour_block_done__"


def blocks() -> list[tuple[int, str]]:
    """(shell, code) of every marked block of the section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Your first hour\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"<!-- first-hour: shell ([12])[^>]*-->\n```sh\n(.*?)\n```", section, re.DOTALL)
    return [(int(shell), code) for shell, code in found]


def environment(tmp_path: Path) -> dict[str, str]:
    """This machine's environment without fluxhook's or the providers' settings (a new user's shell)."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("FLUXHOOK_", "BFL_", "DEERAPI_", "COMETAPI_", "REPLICATE_", "VIRTUAL_ENV"))}
    return keep | {"XDG_DATA_HOME": str(tmp_path / "data")}


class FirstShell:
    """Shell 1: `fluxhook dev` runs in it until Ctrl-C. Each block runs in a bash that has first run what
    the earlier blocks set up (their lines before their `fluxhook dev`: `. .venv/bin/activate`), as the one
    terminal a person keeps open would have."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self.printed: list[str] = []
        self.setup: list[str] = []

    async def run(self, block: str) -> list[str]:
        await self.stop()
        *setup, command = block.replace("\\\n", " ").splitlines()  # a continued line is one command
        assert "fluxhook dev" in command, "shell 1's blocks end by starting `fluxhook dev`"
        self.setup += setup
        code = "\n".join([*self.setup, command])
        with self.log.open("ab") as log:
            # A new process group, as a terminal gives its foreground job: Ctrl-C reaches dev, not only bash.
            self.process = await asyncio.create_subprocess_exec(
                "bash", "-c", code, cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        self.printed = []
        async with asyncio.timeout(WAIT):
            while not self.printed or self.printed[-1] != "Ctrl-C stops both.":
                line = await self.process.stdout.readline()
                assert line, f"shell 1 stopped: {self.log.read_text()[-3000:]}"
                self.printed.append(line.decode().rstrip("\n"))
        return self.printed

    async def stop(self) -> None:
        """Ctrl-C: SIGINT to the foreground process group."""
        if self.process is None or self.process.returncode is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        async with asyncio.timeout(WAIT):
            await self.process.wait()


class SecondShell:
    """Shell 2: one bash reading what is typed into it; each block is followed by a marker line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def type(self, code: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        # The marker on a line of its own: curl's answers end without a newline.
        self.process.stdin.write(f"{code}\nstatus=$?; echo; echo {DONE} $status\n".encode())
        await self.process.stdin.drain()
        out: list[str] = []
        async with asyncio.timeout(2 * WAIT):
            while True:
                line = (await self.process.stdout.readline()).decode()
                assert line, f"shell 2 ended: {''.join(out)}"
                if line.startswith(DONE):
                    assert line.split()[1] == "0", f"a block failed in shell 2:\n{code}\n{''.join(out)}"
                    return "".join(out)
                out.append(line)

    async def read_until(self, pattern: str) -> str:
        """What the shell prints from now until a line matching `pattern` (a background job's output)."""
        assert self.process.stdout is not None
        seen: list[str] = []
        async with asyncio.timeout(2 * WAIT):
            while not seen or not re.search(pattern, seen[-1]):
                line = await self.process.stdout.readline()
                assert line, f"shell 2 ended: {''.join(seen)}"
                seen.append(line.decode())
        return "".join(seen)


@contextlib.asynccontextmanager
async def second_shell(env: dict[str, str]) -> AsyncIterator[SecondShell]:
    process = await asyncio.create_subprocess_exec(
        "bash", cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield SecondShell(process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the shell and its background endpoint
        await process.wait()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_your_first_hour_as_written(tmp_path: Path) -> None:
    taken = [port for port in PORTS if not _free(port)]
    assert not taken, f"the walk-through's ports are taken here: {taken}"
    assert (ROOT / ".venv" / "bin" / "activate").exists(), "the walk-through starts from the clone's .venv"
    assert Path(sys.executable).parent == ROOT / ".venv" / "bin", "run the tests with the clone's .venv"
    steps = blocks()
    assert [shell for shell, _ in steps] == [1, 2, 1, 2, 2, 1, 2], "the section's blocks changed: follow them here"
    env = environment(tmp_path)
    first = FirstShell(env, tmp_path / "shell1.log")
    try:
        async with second_shell(env) as second:
            outputs: list[str] = []
            pasted = False
            for shell, code in steps:
                if shell == 1:
                    printed = await first.run(code)
                    if not pasted:  # "activate the environment and paste those export lines"
                        exports = [line.strip() for line in printed if line.strip().startswith("export ")]
                        assert exports and "$(" not in "".join(exports)
                        await second.type("\n".join([". .venv/bin/activate", *exports]))
                        pasted = True
                else:
                    outputs.append(await second.type(code))
            local, api, endpoint, sink = outputs
            assert "status=stored" in local and "via=callback" in local
            assert "a red fox in fresh snow" in local  # `fluxhook list` shows the prompt
            answers = api.replace(" ", "")
            assert answers.startswith('{"id":"fh_') and '"created_by":"me"' in answers
            assert '"status":"stored"' in answers  # the long-poll's answer
            assert len(set(re.findall(r'"id":"(fh_[0-9a-f]+)"', answers))) == 1  # the same job, asked twice
            assert "status=stored" in sink
            job = re.search(r"(fh_[0-9a-f]+)", sink)
            assert job is not None
            received = sink if f"received job.stored {job[1]}" in sink else await second.read_until(
                rf"received job\.stored {job[1]}")
            assert f"received job.stored {job[1]}" in received
            assert endpoint.strip() == ""  # the endpoint runs in the background, silent until an event comes
        await first.stop()
        assert first.process is not None and first.process.returncode == 130
    finally:
        if first.process is not None and first.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.process.pid, signal.SIGKILL)
            await first.process.wait()
    assert not (tmp_path / "home").exists() and (tmp_path / "data" / "fluxhook" / "dev").is_dir()
    assert all(_free(port) for port in PORTS)

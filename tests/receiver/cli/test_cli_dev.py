"""Local development followed literally (issue 20, item 1): `fluxhook simulate` prints exports with a
literal key, so two shells pasting them share one FLUXHOOK_SECRET_KEY; callbacks refused for another
key are said on the job, which `status` and a timed-out `submit --wait` show. (`fluxhook dev`, the
simulator and the receiver in one command, is run for real in tests/e2e/test_dev.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.cli import simulate
from receiver.cli.common import WaitTimeout
from receiver.cli.ledger import wait_for
from receiver.cli.main import main
from receiver.config.settings import Settings
from receiver.engine.refusals import MISMATCH_NOTE
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from submitter.simulator import Faults, Simulator
from tests.e2e.support import WAIT, env_for
from tests.receiver.cli.test_cli_batch import fluxhook

pytestmark = pytest.mark.anyio

BASH = shutil.which("bash") or "/bin/bash"


def in_a_shell(lines: list[str], then: str, home: Path) -> str:
    """Run the pasted `lines` and then `then` in a new bash, as a person's new terminal would; its stdout."""
    script = "\n".join([*lines, then])
    done = subprocess.run([BASH, "-c", script], capture_output=True, text=True, check=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
    return done.stdout


def test_simulate_prints_exports_two_shells_agree_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(simulate, "run_simulator", lambda **_: None)  # print, do not serve
    assert main(["simulate", "--port", "8900"]) == 0
    printed = capsys.readouterr().out
    exports = [line.strip() for line in printed.splitlines() if line.strip().startswith("export ")]
    assert "$(" not in printed and "`" not in "".join(exports)  # nothing a shell would compute anew
    keys = [in_a_shell(exports, 'echo "$FLUXHOOK_SECRET_KEY"', tmp_path).strip() for _ in range(2)]
    assert len(keys[0]) >= 32 and keys[0] == keys[1]
    ledger = in_a_shell(exports, 'echo "$FLUXHOOK_DB"', tmp_path).strip()
    assert ledger == str(tmp_path / "data" / "fluxhook" / "dev" / "fluxhook.db")  # never the real ledger
    # The development key is kept (owner-only), so the simulator restarted prints the same exports.
    key_file = tmp_path / "data" / "fluxhook" / "dev" / "secret-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.read_text().strip() == keys[0]
    assert main(["simulate", "--port", "8900"]) == 0
    assert capsys.readouterr().out == printed


@contextlib.asynccontextmanager
async def under_another_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, str]]:
    """The simulator, and a receiver on the CLI's ledger holding another FLUXHOOK_SECRET_KEY than the CLI's
    environment (yielded): every callback for the CLI's jobs is refused. No poll comes within the test."""
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=())
    async with serve_in_background(sim.app) as sim_url:
        sock = bind()
        env = env_for(tmp_path, sim_url, f"http://127.0.0.1:{sock.getsockname()[1]}") | {
            "FLUXHOOK_POLL_AFTER": "3600"}
        for name in ("FLUXHOOK_API_URL", "FLUXHOOK_API_KEY"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        receiver = Settings.from_env(env | {"FLUXHOOK_SECRET_KEY": "the-other-shells-key-" + "x" * 32})
        async with serve_in_background(create_app(receiver), sock, settings=receiver):
            yield env
    await sim.aclose()


async def test_status_and_a_timed_out_wait_say_a_callback_was_refused_for_another_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with under_another_key(tmp_path, monkeypatch) as env:
        code, out, err = await fluxhook(capsys, "submit", "--provider", "bfl", "--model", "flux-dev",
                                        "--prompt", "a fox")
        assert code == 0, err
        job_id = out.strip()
        async with Runtime.open(Settings.from_env(env)) as rt:
            async with asyncio.timeout(WAIT):  # the simulator's callback, refused by the receiver
                while (job := await rt.store.get_job(job_id)) is None or job.note is None:
                    await asyncio.sleep(0.05)
            assert job.note == MISMATCH_NOTE
            with pytest.raises(WaitTimeout) as timed_out:
                await wait_for(rt, job_id, 0.1)
        assert MISMATCH_NOTE in str(timed_out.value) and f"fluxhook status {job_id}" in str(timed_out.value)
        code, out, err = await fluxhook(capsys, "status", job_id)
        assert code == 0 and f"note={MISMATCH_NOTE}" in out and "status=submitted" in out
        assert f"(database {env['FLUXHOOK_DB']}, results {env['FLUXHOOK_RESULTS']})" in err
        assert env["FLUXHOOK_SECRET_KEY"] not in out + err


def test_the_dev_command_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "dev" in capsys.readouterr().out.split()
    with pytest.raises(SystemExit):
        main(["dev", "--help"])
    out = capsys.readouterr().out
    assert "--sim-port" in out and "--data" in out and "Ctrl-C stops both" in out


def test_dev_names_a_port_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    taken = bind()
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        assert main(["dev", "--port", port, "--sim-port", "0"]) == 2
    finally:
        taken.close()
    assert f"port {port} on 127.0.0.1 is in use: choose another with --port" in capsys.readouterr().err
    assert os.listdir(tmp_path / "data" / "fluxhook" / "dev") == ["secret-key"]

"""What the job commands print as they go: `submit --wait` (the job id at once, then each change), `list` and
`status` (the prompt cut, metadata, files' `location`), `cancel` of a job whose provider cannot cancel."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from receiver.cli.jobs import submit
from receiver.config.settings import Settings
from tests.receiver.cli.test_cli_batch import fluxhook, simulator

pytestmark = pytest.mark.anyio


def submit_argv(prompt: str, *extra: str, provider: str = "bfl", model: str = "flux-dev") -> list[str]:
    return ["submit", "--provider", provider, "--model", model, "--prompt", prompt, *extra]


async def test_submit_wait_says_the_job_id_at_once_then_each_change_as_it_happens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch) as s:
        args = argparse.Namespace(provider="bfl", model="flux-dev", prompt="hold it", param=None, events=None,
                                  wait=True, timeout=60.0, json=False)
        task = asyncio.create_task(submit(args, Settings.from_env(s.env)))
        capsys.readouterr()
        err = ""
        async with asyncio.timeout(20):
            while ": submitted (provider task" not in err:  # polling for the line, not timing
                await asyncio.sleep(0.01)
                err += capsys.readouterr().err
        assert not task.done()  # said while it still waits
        first, second = err.splitlines()[:2]
        job_id = first.split(":")[0]
        assert job_id.startswith("fh_") and "recorded (bfl flux-dev); waiting for it" in first
        assert second.startswith(f"{job_id}: submitted (provider task ")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_submit_wait_prints_each_status_once_in_order_and_the_result_on_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch):
        code, out, err = await fluxhook(capsys, *submit_argv("a fox", "--wait", "--timeout", "30"))
    assert code == 0, err
    job_id = out.splitlines()[0]
    assert "status=stored" in out and job_id not in err.replace(f"{job_id}:", "")  # stdout: the result only
    said = [line.split(": ", 1)[1].split(" ")[0] for line in err.splitlines() if line.startswith(f"{job_id}: ")]
    assert said[0] == "recorded" and said[-1] == "stored"
    assert len(said) == len(set(said))  # each change once
    order = ["recorded", "queued", "submitted", "running", "succeeded", "stored"]
    assert said == sorted(said, key=order.index)


async def test_list_shows_the_prompt_cut_and_metadata_and_status_cuts_a_long_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    long = "a red fox in fresh snow " * 5000  # 120 KB
    cut = long[:199] + "…"
    lines = tmp_path / "jobs.jsonl"
    lines.write_text(json.dumps({"provider": "bfl", "model": "flux-dev", "prompt": long,
                                 "metadata": {"sku": "A1"}}) + "\n")
    async with simulator(tmp_path, monkeypatch):
        code, _, err = await fluxhook(capsys, "batch", str(lines), "--interval", "0.1")
        assert code == 0, err
        code, out, _ = await fluxhook(capsys, "list", "--json")
        (row,) = json.loads(out)
        assert row["prompt"] == cut and row["metadata"] == {"sku": "A1", "batch_line": 1}
        code, out, _ = await fluxhook(capsys, "list")
        assert f"prompt={cut}" in out and '"sku": "A1"' in out and len(out) < 1000
        job_id = row["id"]
        code, out, err = await fluxhook(capsys, "status", job_id)
        assert code == 0 and f"prompt={cut}" in out and len(out) < 1500
        assert "cut to 200 of its 120000 characters: `--full` shows it all" in err
        code, out, _ = await fluxhook(capsys, "status", job_id, "--json")
        view = json.loads(out)
        assert view["prompt"] == cut and view["metadata"]["sku"] == "A1"
        (file,) = view["files"]  # the API's word for where a file is: `location`
        assert Path(file["location"]).read_bytes().startswith(b"\x89PNG") and "path" not in file
        code, out, err = await fluxhook(capsys, "status", job_id, "--json", "--full")
        assert json.loads(out)["prompt"] == long and "prompt is cut" not in err
        code, out, err = await fluxhook(capsys, "status", job_id)
        assert f"file 0: {file['location']}" in out


async def test_cancel_says_when_the_provider_cannot_cancel_and_may_still_bill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with simulator(tmp_path, monkeypatch) as s:
        code, out, _ = await fluxhook(capsys, *submit_argv("hold this"))  # BFL: no cancel endpoint
        code, out, err = await fluxhook(capsys, "cancel", out.strip())
        assert code == 0 and "canceled" in out
        assert "bfl has no cancel endpoint: the provider may still run the job and bill it" in err
        code, out, _ = await fluxhook(capsys, *submit_argv("hold this", provider="replicate",
                                                           model="black-forest-labs/flux-schnell"))
        code, out, err = await fluxhook(capsys, "cancel", out.strip())
        assert code == 0 and "canceled" in out and "cancel endpoint" not in err
        assert s.sim.stats()["totals"]["cancels"] == 1  # Replicate's was asked


async def test_the_demo_prints_no_log_lines_and_says_via_as_status_does(tmp_path: Path) -> None:
    from tests.e2e.support import run_cli

    code, out, err = await run_cli({"FLUXHOOK_DB": str(tmp_path / "mine.db")}, "demo", "--keep", str(tmp_path / "d"))
    assert code == 0, err
    assert " INFO " not in out + err and "fluxhook.sweep" not in out + err  # its own words only
    stored = [line for line in out.splitlines() if line.startswith("stored ")]
    assert len(stored) == 6 and all(" via=callback " in line or " via=poll " in line for line in stored)
    assert sum(" via=poll " in line for line in stored) == 1  # the job whose callback was lost

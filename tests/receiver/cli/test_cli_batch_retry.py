"""`fluxhook batch --retry-failed` (only the lines not stored run again, each as a new attempt) and the ETA
of its progress display (slow running jobs count while they run)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from receiver.cli.progress import BatchProgress, eta
from submitter.simulator import Faults
from tests.receiver.cli.test_cli_batch import fluxhook, jobs_in, line, simulator, write

pytestmark = pytest.mark.anyio


async def test_retry_failed_runs_only_the_failed_lines_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "jobs.jsonl", line("a red fox"), line("a flaky owl"))
    async with simulator(tmp_path, monkeypatch) as s:
        s.sim.add_rule("flaky", Faults(submit_errors=[400], runtime=0.05))  # refused once, then accepted
        code, _, err = await fluxhook(capsys, "batch", str(path), "--interval", "0.1")
        assert code == 1 and "--retry-failed` runs the 1 line(s) not stored again" in err
        first = dict(jobs_in(s.env))
        code, _, err = await fluxhook(capsys, "batch", str(path), "--interval", "0.1")  # a plain resume
        assert code == 1 and dict(jobs_in(s.env)) == first  # follows the same jobs: the failed one stays failed
        code, out, err = await fluxhook(capsys, "batch", str(path), "--retry-failed", "--interval", "0.1", "--json")
        assert code == 0, err
        assert "0 new, 1 already recorded (resumed), 1 failed line(s) run again" in err
        rows = {r["line"]: r for r in map(json.loads, out.splitlines())}
        assert rows[1]["status"] == rows[2]["status"] == "stored"
        assert first[rows[1]["id"]] == "stored" and rows[2]["id"] not in first  # the stored line was not re-run
        assert len(jobs_in(s.env)) == 3
        code, out, _ = await fluxhook(capsys, "list", "--json")
        again = next(j for j in json.loads(out) if j["id"] == rows[2]["id"])
        assert again["metadata"] == {"batch_line": 2, "batch_attempt": 1}
        code, _, err = await fluxhook(capsys, "batch", str(path), "--retry-failed", "--interval", "0.1")
        assert code == 0 and "0 new, 2 already recorded (resumed), 0 failed line(s) run again" in err
        assert len(jobs_in(s.env)) == 3  # nothing failed: nothing more to run
        assert s.sim.stats()["totals"]["submit_requests"] == 3  # the fox once; the owl refused, then accepted


def test_eta_counts_a_slow_running_job_while_it_runs() -> None:
    # Three jobs took 1 s each; the fourth has run 30 s: by the pace of the finished ones it would be due
    # already. It needs as long again as it has run, since no finished job ran that long.
    assert eta([1.0, 1.0, 1.0], [30.0], 0) == 30.0
    # A running job that finished ones outlasted needs what they needed beyond its time so far.
    assert eta([10.0, 12.0], [4.0], 0) == 7.0
    # Queued jobs need the average of every duration seen, running ones' so far included, over the lanes.
    assert eta([2.0, 2.0], [2.0, 2.0], 4) == pytest.approx(max(2.0, (2.0 + 2.0 + 4 * 2.0) / 2))
    assert eta([], [], 5) is None  # nothing tells yet


def test_the_display_shows_that_eta(capsys: pytest.CaptureFixture[str]) -> None:
    with BatchProgress(4) as display:
        display.update(Counter(stored=3, running=1), finished=[1.0, 1.0, 1.0], running=[30.0])
    assert "ETA 30 s" in capsys.readouterr().err

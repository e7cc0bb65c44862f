"""A small run of the fault-injection soak (`bench/soak.py`): nothing lost, duplicated, forged or 500.

The soak runs as its own process, as `python -m bench.soak` does: it starts a
real receiver process, SIGKILLs it once mid-run and restarts it, while the
simulator drops, duplicates and reorders callbacks and an attacker forges some.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^soak: (?P<fields>jobs=.*)$", re.MULTILINE)


def test_small_soak_loses_nothing_and_accepts_no_forgery(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--jobs", "40", "--kills", "1", "--timeout", "240",
         "--seed", "20240", "--workdir", str(tmp_path / "soak")],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    match = SUMMARY.search(done.stdout)
    assert match is not None, done.stdout + done.stderr
    fields = dict(field.split("=", 1) for field in match["fields"].split())
    assert done.returncode == 0, match[0] + "\n" + done.stderr
    assert fields["jobs"] == "40"
    assert int(fields["stored"]) > 0
    assert fields["lost"] == "0"
    assert fields["duplicates_stored"] == "0"
    assert fields["forgeries_accepted"] == "0"
    assert fields["http_500"] == "0"
    assert fields["kills"] == "1"

"""Small runs of the fault-injection soak (`bench/soak.py`): nothing lost, duplicated, forged or 500.

The soak runs as its own process, as `python -m bench.soak` does: it starts a
real receiver process, SIGKILLs it once mid-run and restarts it, while the
simulator drops, duplicates and reorders callbacks and an attacker forges some.
The second run does it with three replicas behind a round-robin forwarder on one
PostgreSQL schema (a fresh one, dropped afterwards), one of them killed. The third
keeps the result files in S3 (a moto server the soak starts on loopback) with two
replicas on PostgreSQL: every stored object is read back and checked, and no stray or
staging object may be left under the prefix.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.pg import fresh_schema

PROJECT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^soak: (?P<fields>jobs=.*)$", re.MULTILINE)

pytestmark = pytest.mark.anyio


async def soak(*args: str) -> dict[str, str]:
    """Run `python -m bench.soak ARGS` small; its summary's fields, once it passed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak", "--jobs", "40", "--kills", "1", "--timeout", "240", "--seed", "20240",
        *args, cwd=PROJECT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(300):
        out, err = (part.decode() for part in await process.communicate())
    match = SUMMARY.search(out)
    assert match is not None, out + err
    fields = dict(field.split("=", 1) for field in match["fields"].split())
    assert process.returncode == 0, match[0] + "\n" + err
    assert fields["jobs"] == "40"
    assert int(fields["stored"]) > 0
    assert fields["lost"] == "0"
    assert fields["duplicates_stored"] == "0"
    assert fields["forgeries_accepted"] == "0"
    assert fields["http_500"] == "0"
    assert fields["kills"] == "1"
    return fields


async def test_small_soak_loses_nothing_and_accepts_no_forgery(tmp_path: Path) -> None:
    fields = await soak("--workdir", str(tmp_path / "soak"))
    assert (fields["replicas"], fields["db"], fields["results"]) == ("1", "sqlite", "local")


async def test_small_soak_with_three_replicas_on_postgresql(tmp_path: Path) -> None:
    async with fresh_schema() as db:  # the URL names the schema: the soak uses it as it is
        fields = await soak("--db", db, "--replicas", "3", "--workdir", str(tmp_path / "soak"))
    assert (fields["replicas"], fields["db"]) == ("3", "postgresql")


async def test_small_soak_with_results_in_s3_and_two_replicas_on_postgresql(tmp_path: Path) -> None:
    async with fresh_schema() as db:
        fields = await soak("--db", db, "--replicas", "2", "--results", "s3://soak/results",
                            "--workdir", str(tmp_path / "soak"))
    assert (fields["replicas"], fields["db"], fields["results"]) == ("2", "postgresql", "s3")

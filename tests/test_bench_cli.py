"""`python -m bench.NAME --help` (and `-h`) prints the module's usage and exits 0, starting nothing.

Every bench module is run as a program in a subprocess: all of them at once (each only imports
and parses its arguments), so the file costs about one interpreter start per CPU. "Started
nothing" is read from what the run left behind: no output but the usage, no benchmark progress
or result, and nothing created in a temporary folder of its own (every benchmark makes its
ledger, results and servers' files under TMPDIR).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FLAGS = ("--help", "-h")


def modules() -> list[str]:
    return ["bench", *sorted(f"bench.{p.stem}" for p in BENCH.glob("*.py") if not p.stem.startswith("__"))]


def source(module: str) -> Path:
    return BENCH / "__main__.py" if module == "bench" else BENCH / f"{module.removeprefix('bench.')}.py"


def docstring(module: str) -> str:
    return ast.get_docstring(ast.parse(source(module).read_text())) or ""


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    leftovers: list[str]


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[tuple[str, str], Ran]]:
    with tempfile.TemporaryDirectory() as top:
        started = {}
        for module in modules():
            for flag in FLAGS:
                tmp = Path(top) / f"{module}{flag}"
                tmp.mkdir()
                env = {**os.environ, "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
                started[module, flag] = (tmp, subprocess.Popen(
                    [sys.executable, "-m", module, flag], cwd=ROOT, env=env, text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                ))
        ran = {}
        try:
            for key, (tmp, proc) in started.items():
                # A guard against a module that ignores --help and runs its benchmark, not a measurement.
                out, err = proc.communicate(timeout=300)
                ran[key] = Ran(proc.returncode, out, err, sorted(p.name for p in tmp.iterdir()))
        finally:
            for _tmp, proc in started.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        yield ran


def test_every_bench_file_is_covered() -> None:
    names = modules()
    assert "bench" in names and "bench.polling" in names and "bench.soak" in names
    assert len(names) == len(list(BENCH.glob("*.py"))) - 1  # every file but __init__.py (bench is __main__.py)


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("module", modules())
def test_help_prints_usage_and_starts_nothing(runs: dict[tuple[str, str], Ran], module: str, flag: str) -> None:
    ran = runs[module, flag]
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("usage: "), ran.stdout[:500]
    usage = ran.stdout.splitlines()[0]
    assert "[-h]" in usage
    first_line = docstring(module).splitlines()[0]
    assert first_line in ran.stdout  # the module's docstring is the description
    assert "show this help message and exit" in ran.stdout
    # Nothing ran: no result JSON, no progress or log lines, nothing made under TMPDIR.
    assert '"rows"' not in ran.stdout and '"name"' not in ran.stdout
    assert ran.stderr == ""
    assert ran.leftovers == []


@pytest.mark.parametrize("module", modules())
def test_help_names_the_module(runs: dict[tuple[str, str], Ran], module: str) -> None:
    usage = runs[module, "--help"].stdout.splitlines()[0]
    assert usage.startswith(f"usage: python -m {module} ")


def test_sized_benchmarks_offer_their_sizes(runs: dict[tuple[str, str], Ran]) -> None:
    sized = [m for m in modules() if "main(run)" in source(m).read_text()]
    assert "bench.polling" in sized and "bench.downloads" in sized
    for module in sized:
        text = runs[module, "--help"].stdout
        assert "[--tiny] [{tiny,full}]" in text, (module, text[:300])

"""README "The Python client": every Python block of that section, taken from README.md literally, run as a
program of its own (`python -c BLOCK`, a fresh interpreter in an empty folder) against a real `fluxhook serve` on
loopback with the simulator as the provider, pointed at it only by FLUXHOOK_API_URL and FLUXHOOK_API_KEY.

Then what each block promises is checked: the files are there and are the stored images, the same
Idempotency-Key run again makes no second job, the async block's three jobs, the errors block's ApiError.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from submitter.media import sniff_image
from tests.e2e.integrations_support import API_KEY, PROJECT, Stack, stack
from tests.e2e.support import WAIT

pytestmark = pytest.mark.anyio

SECTION = "### The Python client"


def client_examples() -> list[str]:
    """The ```python blocks of README's client section, in order, as written."""
    text = (PROJECT / "README.md").read_text()
    start = text.index(f"\n{SECTION}\n") + 1
    end = re.compile(r"^#{1,3} ", re.M).search(text, start + len(SECTION))
    section = text[start:end.start() if end else len(text)]
    return re.findall(r"^```python\n(.*?)^```$", section, re.M | re.S)


async def run_example(code: str, cwd: Path, env: dict[str, str]) -> str:
    """`python -c CODE` in `cwd`: its stdout; AssertionError with its stderr unless it exits 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(2 * WAIT):
        out, err = await process.communicate()
    assert process.returncode == 0, f"the README example exited {process.returncode}:\n{code}\n{err.decode()}"
    return out.decode()


async def jobs(s: Stack) -> list[dict[str, Any]]:
    answer = await s.http.get(f"{s.serves[0].url}/v1/jobs", params={"limit": "100"},
                              headers={"authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["jobs"]  # type: ignore[no-any-return]


def image(path: Path) -> str | None:
    return sniff_image(path.read_bytes()[:256])


async def test_the_readmes_client_examples_run_as_written(tmp_path: Path) -> None:
    run_one, steps, concurrent, errors = examples = client_examples()
    assert len(examples) == 4, "README's client section has a new Python block: give it a check here"
    work = tmp_path / "work"
    work.mkdir()
    async with stack(tmp_path) as s:
        serve = s.serves[0]
        await serve.start()
        env = {**os.environ, "PYTHONPATH": str(PROJECT), "FLUXHOOK_API_URL": serve.url, "FLUXHOOK_API_KEY": API_KEY}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(name, None)  # loopback, never through a proxy

        # One call: the file is there, an image; the same call again is the same job, downloaded again.
        first = (await run_example(run_one, work, env)).split()
        assert len(first) == 1 and re.fullmatch(r"out/fh_[0-9a-f]+-0\.\w+", first[0]), first
        stored = work / first[0]
        assert image(stored) is not None
        assert (await run_example(run_one, work, env)).split() == first
        assert len(await jobs(s)) == 1

        # Step by step: what it prints is the stored file, as the API describes it.
        (line,) = (await run_example(steps, work, env)).splitlines()
        path, content_type, size, sha256 = line.split()
        data = (work / path).read_bytes()
        assert image(work / path) == content_type and len(data) == int(size)
        assert hashlib.sha256(data).hexdigest() == sha256

        # Async: three jobs at once, three files.
        lines = (await run_example(concurrent, work, env)).splitlines()
        assert len(lines) == 3 and all(image(work / p) is not None for p in lines)
        assert len({p.split("-")[0] for p in lines}) == 3

        # Errors: the typo is the API's 422 naming the field, and no job is made.
        assert (await run_example(errors, work, env)).strip() == "422 invalid provider"
        made = await jobs(s)
        assert len(made) == 5 and {j["status"] for j in made} == {"stored"}

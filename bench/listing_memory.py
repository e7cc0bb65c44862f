"""Receiver memory while serving listings over a ledger of heavy jobs: its peak RSS while answering
/ui/providers, GET /v1/jobs?limit=200 and /ui/jobs with 10,000 jobs of 250 KB params each, against its RSS
after a request to a tiny page. Target: within 1.2x (a listing costs what it shows, not what jobs carry).

    python -m bench.listing_memory          # 10,000 jobs of 250 KB params (a 2.5 GB ledger), 5 requests a page
    python -m bench.listing_memory tiny     # 200 jobs of 250 KB params, 2 requests a page

The ledger is a SQLite file seeded through the Store (SQLiteStore.create_job and the status changes: a
quarter of the jobs each queued, submitted, stored and failed, spread over the last day, none due, so the
server's sweep leaves them alone). Half the jobs carry an image edit's input as `--param
input_image=@photo.png` sends it to BFL (250 KB of base64, different in every job), half 250 KB of short
strings (250 strings of 1,000 characters: no value is large on its own).

Each page is measured on a fresh `fluxhook serve` process (one uvicorn worker, FLUXHOOK_API_KEYS set,
requests with a bearer key), so no page inherits another's heap: one request to a tiny page (/ui/login)
and one to the API (a job that does not exist: its code is loaded on first use) first, then, after a
moment idle, the baseline is its VmRSS (/proc/PID/status); the peak RSS is reset
(`5` to /proc/PID/clear_refs; where that is refused, the lifetime VmHWM is read instead, as the note says)
and the page is requested N times in turn; the subject is VmHWM afterwards. The note gives the rise
(peak minus RSS just before the page's requests) in MiB and the size of the page.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._cli import main
from bench._setup import environment, free_port
from bench.memory import status_of
from receiver.store import Job
from receiver.store.sqlite import SQLiteStore
from submitter.bodies import Observation
from submitter.status import Status

SIZES: dict[str, dict[str, int]] = {
    "full": {"jobs": 10_000, "param_bytes": 250_000, "requests": 5, "budget": 3600},
    "tiny": {"jobs": 200, "param_bytes": 250_000, "requests": 2, "budget": 300},
}
PAGES = ("/ui/providers", "/v1/jobs?limit=200", "/ui/jobs")
TINY_PAGE = "/ui/login"
TINY_API = "/v1/jobs/fh_none"
KEY = "bench-listing-key-0123456789abcdef"
TARGET = 1.2
#: How long the receiver is left idle before the baseline is read.
SETTLE = 1.0
MIB = 1024 * 1024


def params_of(i: int, size: int) -> dict[str, Any]:
    """Job i's params: an inline image (even i) or many short strings (odd i), about `size` bytes as JSON."""
    if i % 2 == 0:
        raw = b"\x89PNG\r\n\x1a\n" + random.Random(i).randbytes(size * 3 // 4 - 8)
        return {"prompt": f"listing memory {i}: make it snow", "input_image": base64.b64encode(raw).decode()}
    tile = f"{i:08d}" * 125
    return {"prompt": f"listing memory {i}: a fox", "tiles": [tile] * (size // 1000)}


async def fill(db: Path, jobs: int, size: int, now: float) -> None:
    """`jobs` jobs through the Store, created over the last day, a quarter in each of four statuses."""
    store = SQLiteStore(str(db))
    await store.open()
    try:
        for i in range(jobs):
            at = now - 80_000 * (jobs - i) / jobs
            job_id = f"fh_listing{i:06d}"
            await store.create_job(Job(id=job_id, provider=("bfl", "replicate")[i % 3 == 0], model="flux-dev",
                                       params=params_of(i, size), status=Status.QUEUED, created_at=at,
                                       deadline_at=at + 7 * 86_400, next_check_at=None, metadata={"n": i}))
            if i % 4 == 0:
                continue  # queued, never due
            await store.record_submit(job_id, f"task-{i}", None, now=at + 1, next_check_at=None)
            if i % 4 == 2:
                await store.apply(job_id, Observation(f"task-{i}", Status.SUCCEEDED, "ready",
                                                      urls=("https://x.test/0.png",)),
                                  now=at + 5, next_check_at=None, expires=(at + 600,), event=None)
                await store.store_file(job_id, 0, path=f"{job_id}/0.png", size=600, sha256="0" * 64,
                                       content_type="image/png")
                await store.finish(job_id, Status.STORED, now=at + 6 + i % 7)
            elif i % 4 == 3:
                await store.finish(job_id, Status.FAILED, now=at + 30, reason="bench")
    finally:
        await store.close()


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux 4.0+); False where that is refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def one_page(tmp: Path, env: dict[str, str], page: str, requests: int, deadline: float) -> dict[str, Any]:
    """A fresh server: the tiny page, the baseline, then `page` `requests` times; RSS figures in MiB."""
    port = int(env["FLUXHOOK_PUBLIC_URL"].rsplit(":", 1)[1])
    log = (tmp / "receiver.log").open("ab")
    receiver = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter; started before timing
        [sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env}, stdout=log, stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(trust_env=False, base_url=base, timeout=600,
                                     headers={"authorization": f"Bearer {KEY}"}) as http:
            while True:
                try:
                    if (await http.get("/healthz", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or receiver.poll() is not None:
                    tail = (tmp / "receiver.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the receiver did not answer; its log ends: {tail}")
                await asyncio.sleep(0.05)
            tiny = await http.get(TINY_PAGE)
            assert tiny.status_code == 200, (TINY_PAGE, tiny.status_code)
            # And the API's code, loaded on its first request: a job that does not exist (404).
            assert (await http.get(TINY_API)).status_code == 404
            await asyncio.sleep(SETTLE)
            baseline = status_of(receiver.pid)
            reset = reset_peak(receiver.pid)
            before = status_of(receiver.pid)
            t0 = time.perf_counter()
            sizes = []
            for _ in range(requests):
                answer = await http.get(page)
                assert answer.status_code == 200, (page, answer.status_code, answer.text[:200])
                sizes.append(len(answer.content))
            seconds = (time.perf_counter() - t0) / requests
            after = status_of(receiver.pid)
    finally:
        receiver.terminate()
        try:
            receiver.wait(10)
        except subprocess.TimeoutExpired:
            receiver.kill()
            receiver.wait()
        log.close()
    return {"baseline": baseline, "before": before, "after": after, "reset": reset, "bytes": max(sizes),
            "seconds": seconds, "tiny_bytes": len(tiny.content)}


async def measure(size: str, tmp: Path) -> dict[str, Any]:
    config = SIZES[size]
    jobs, param_bytes, requests = config["jobs"], config["param_bytes"], config["requests"]
    deadline = time.monotonic() + config["budget"]
    port = free_port()
    env = environment(tmp, "http://127.0.0.1:9", f"http://127.0.0.1:{port}", FLUXHOOK_API_KEYS=KEY)
    db = Path(env["FLUXHOOK_DB"])
    t0 = time.perf_counter()
    await fill(db, jobs, param_bytes, time.time())
    seeded_s = time.perf_counter() - t0
    ledger_mib = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / MIB
    rows = []
    measured = {}
    for page in PAGES:
        got = await one_page(tmp, env, page, requests, deadline)
        measured[page] = got
        peak, baseline = got["after"]["VmHWM"], got["baseline"]["VmRSS"]
        ratio = peak / baseline
        rows.append({
            "metric": f"receiver peak RSS serving GET {page} x{requests}, {jobs:,} jobs of {param_bytes // 1000} KB"
                      " params",
            "value": round(peak, 1), "unit": "MiB", "baseline": round(baseline, 1), "ratio": round(ratio, 3),
            "note": (f"target <= {TARGET} ({'target met' if ratio <= TARGET else 'target MISSED'}); baseline: the"
                     f" same fresh `fluxhook serve` after one GET {TINY_PAGE} ({got['tiny_bytes']:,} bytes) and one"
                     f" GET {TINY_API} (404);"
                     f" peak rise {peak - got['before']['VmRSS']:.1f} MiB over the RSS before the page's requests"
                     f" ({'VmHWM reset by clear_refs' if got['reset'] else 'lifetime VmHWM: clear_refs refused'});"
                     f" page {got['bytes']:,} bytes, {got['seconds'] * 1000:.0f} ms a request; SQLite ledger"
                     f" {ledger_mib:,.0f} MiB"),
        })
    return {
        "name": "listing_memory",
        "rows": rows,
        "environment": {"jobs": jobs, "param_bytes": param_bytes, "requests_per_page": requests, "ledger": "sqlite",
                        "ledger_mib": round(ledger_mib, 1), "seeded_s": round(seeded_s, 1),
                        "rss_mib": {page: {k: v for k, v in got.items() if k in ("baseline", "before", "after")}
                                    for page, got in measured.items()}},
    }


async def run(size: str = "full") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fluxhook-listing-") as tmp:
        return await measure(size, Path(tmp))


if __name__ == "__main__":
    main(run)

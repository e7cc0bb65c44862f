"""Load time of the /ui pages with 1,000 stored jobs in the ledger, against a bare Starlette page of the same size.

    python -m bench.ui_load          # 1,000 stored jobs, 100 loads per page; then /ui/providers at 10,000 jobs
    python -m bench.ui_load tiny     # 1,000 stored jobs, 10 loads per page

Question: does the gallery stay quick as the ledger grows? Each page is rendered by the receiver app
(SQLite store, 1,000 stored jobs with one 600-byte PNG each, a bearer API key) over httpx's
ASGITransport; the baseline is a bare Starlette app answering a fixed HTML body of the same size through
the same transport, measured alternately in the same run. Median per-request wall time (the HTML only:
the browser then fetches the thumbnails, each a plain file response).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bench._cli import main
from bench._setup import median_get
from receiver.config.keys import parse_api_keys
from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.store import Job
from receiver.store.sqlite import SQLiteStore
from receiver.web.app import create_app
from submitter.bodies import Observation
from submitter.simulator import png_image
from submitter.status import Status

JOBS = 1_000
KEY = "bench-key-0123456789abcdef"
PAGES = ("/ui", "/ui/jobs", "/ui/jobs/fh_bench000500", "/ui/providers")


async def _ledger(store: SQLiteStore, results: Path, now: float, jobs: int) -> None:
    image = png_image("bench")
    for i in range(jobs):
        job_id = f"fh_bench{i:06d}"
        at = now - (jobs - i) * 86400 / jobs  # spread over the provider panel's last day
        await store.create_job(Job(id=job_id, provider=("bfl", "replicate")[i % 2], model="flux-dev",
                                   params={"prompt": f"bench prompt {i}"}, status=Status.QUEUED,
                                   created_at=at, deadline_at=at + 1800, metadata={"n": i}))
        await store.record_submit(job_id, f"task-{i}", None, now=at, next_check_at=None)
        await store.apply(job_id, Observation(f"task-{i}", Status.SUCCEEDED, "ready", urls=("https://x/0.png",)),
                          now=at + 1, next_check_at=None, expires=(at + 600,))
        (results / job_id).mkdir(parents=True)
        (results / job_id / "0.png").write_bytes(image)
        await store.store_file(job_id, 0, path=f"{job_id}/0.png", size=len(image), sha256="0" * 64,
                               content_type="image/png")
        await store.finish(job_id, Status.STORED, now=at + 2)


async def measure(loads: int, jobs: int = JOBS, pages: tuple[str, ...] = PAGES) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings.from_env({})
        settings = base.with_overrides(
            db=str(Path(tmp) / "bench.db"), results=Path(tmp) / "results", secret_key=b"b" * 40,
            integrations=dataclasses.replace(base.integrations, api_keys=parse_api_keys(KEY)),
        )
        store = SQLiteStore(settings.db)
        await store.open()
        await _ledger(store, settings.results, time.time(), jobs)
        async with httpx.AsyncClient() as api, httpx.AsyncClient() as cdn:
            rt = Runtime(settings=settings, store=store, api=api, cdn=cdn)
            app = create_app(settings, runtime=rt, workers=False)
            auth = {"authorization": f"Bearer {KEY}"}
            subject = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bench", headers=auth)
            for page in pages:
                body = (await subject.get(page)).content

                async def fixed(request: Request, body: bytes = body) -> Response:
                    return HTMLResponse(body)

                bare = Starlette(routes=[Route(page, fixed)])
                baseline = httpx.AsyncClient(transport=httpx.ASGITransport(bare), base_url="http://bench")
                ours: list[float] = []
                theirs: list[float] = []
                await median_get(subject, page, 3)
                await median_get(baseline, page, 3)
                for _ in range(5):  # alternate, so drift hits both alike
                    ours.append(await median_get(subject, page, max(1, loads // 5)))
                    theirs.append(await median_get(baseline, page, max(1, loads // 5)))
                await baseline.aclose()
                a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
                rows.append({
                    "metric": f"GET {page.replace('fh_bench000500', '{id}')}, {jobs:,} stored jobs",
                    "value": round(a, 2), "unit": "ms", "baseline": round(b, 3), "ratio": round(a / b, 1),
                    "note": f"median per load ({len(body):,} bytes of HTML) over httpx ASGITransport; SQLite; "
                            "baseline: bare Starlette answering the same bytes",
                })
            await subject.aclose()
        await store.close()
    return rows


async def run(size: str = "full") -> dict[str, Any]:
    loads = 10 if size == "tiny" else 100
    rows = await measure(loads)
    if size != "tiny":  # the provider panel over a day of 10,000 jobs (aggregated by the database)
        rows += await measure(20, 10 * JOBS, ("/ui/providers",))
    return {"name": "ui_load", "rows": rows, "environment": {"jobs": JOBS, "loads": loads}}


if __name__ == "__main__":
    main(run)

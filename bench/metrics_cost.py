"""Cost of one `GET /metrics` scrape with 1,000 jobs in the ledger, against a bare Starlette endpoint.

    python -m bench.metrics_cost          # 1,000 jobs, 500 scrapes
    python -m bench.metrics_cost tiny     # 1,000 jobs, 50 scrapes

Question: is a scrape cheap enough to run every few seconds beside callbacks? A scrape reads the
ledger (`counts()` grouped by status, the newest outbox seq, every sink's position) and renders
every metric family. The subject is the receiver app (SQLite store, the ops routes added, one
webhook sink registered, metrics already carrying a few label sets) over httpx's ASGITransport; the
baseline is a bare Starlette app answering a fixed text body of the same size through the same
transport, measured alternately in the same run. Median per-request wall time; the ratio is
subject over baseline.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench._cli import main
from bench._setup import median_get
from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.store import Job
from receiver.store.sqlite import SQLiteStore
from receiver.web.app import create_app
from submitter.status import Status

JOBS = 1_000
STATUSES = (Status.STORED, Status.STORED, Status.STORED, Status.FAILED, Status.SUBMITTED, Status.QUEUED)


async def measure(scrapes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({}).with_overrides(db=str(Path(tmp) / "bench.db"), results=Path(tmp) / "r")
        store = SQLiteStore(settings.db)
        await store.open()
        now = time.time()
        for i in range(JOBS):
            await store.create_job(Job(id=f"fh_bench{i:06d}", provider="bfl", model="flux-dev",
                                       params={"prompt": "p"}, status=STATUSES[i % len(STATUSES)],
                                       created_at=now, deadline_at=now + 1800))
        await store.register_sink("webhook-1", "webhook", "https://sink.bench/…", now=now)
        async with httpx.AsyncClient() as api, httpx.AsyncClient() as cdn:
            rt = Runtime(settings=settings, store=store, api=api, cdn=cdn)
            for provider in ("bfl", "replicate"):
                for verdict in ("accepted", "duplicate", "rejected"):
                    rt.prom.callback(provider, verdict)
                rt.prom.callback_ack.labels(provider).observe(0.004)
                rt.prom.downloaded(provider, "stored", 0.3, 1_500_000)
            app = create_app(settings, runtime=rt, workers=False)
            subject = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bench")
            size = len((await subject.get("/metrics")).content)
            body = b"x" * size

            async def fixed(request: Request) -> Response:
                return Response(body, media_type="text/plain")

            bare = Starlette(routes=[Route("/metrics", fixed)])
            baseline = httpx.AsyncClient(transport=httpx.ASGITransport(bare), base_url="http://bench")
            ours: list[float] = []
            theirs: list[float] = []
            await median_get(subject, "/metrics", 5)  # warm-up
            await median_get(baseline, "/metrics", 5)
            for _ in range(5):  # alternate, so drift hits both alike
                ours.append(await median_get(subject, "/metrics", max(1, scrapes // 5)))
                theirs.append(await median_get(baseline, "/metrics", max(1, scrapes // 5)))
            await subject.aclose()
            await baseline.aclose()
        await store.close()
    a, b = statistics.median(ours) * 1e6, statistics.median(theirs) * 1e6
    return {"name": "metrics_cost", "rows": [
        {"metric": f"GET /metrics, {JOBS:,} jobs in the ledger", "value": round(a, 1), "unit": "us",
         "baseline": round(b, 1), "ratio": round(a / b, 2),
         "note": f"median per scrape ({size:,} bytes) over httpx ASGITransport; SQLite store; "
                 "baseline: bare Starlette answering the same number of bytes"},
    ], "environment": {"jobs": JOBS, "scrapes": scrapes, "bytes": size}}


async def run(size: str = "full") -> dict[str, Any]:
    return await measure(50 if size == "tiny" else 500)


if __name__ == "__main__":
    main(run)

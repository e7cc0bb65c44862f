"""Cold start: from process start to the first 2xx on /healthz, and the import time of the app
module, each against a baseline measured in the same run (bare Starlette served by uvicorn, and
`import starlette.applications`).

And the AWS Lambda handler: a fresh process that imports `receiver.serverless` and answers its
first event (a /healthz API Gateway HTTP API v2 event), then warm events in the same process,
against bare Starlette under Mangum doing the same. The database is migrated beforehand, as the
deploy step (`fluxhook migrate`) would."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from bench._cli import main
from bench._setup import free_port


def _first_2xx(command: list[str], env: dict[str, str], port: int) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while time.perf_counter() - start < 30:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 300:
                    return time.perf_counter() - start
            except httpx.TransportError:
                time.sleep(0.005)
        raise RuntimeError("no 2xx within 30 s")
    finally:
        process.terminate()
        process.wait(10)


#: A /healthz request as a Lambda function URL / API Gateway HTTP API (payload 2.0) event.
HEALTHZ_EVENT = {
    "version": "2.0", "routeKey": "$default", "rawPath": "/healthz", "rawQueryString": "",
    "headers": {"host": "abcdefgh.lambda-url.eu-west-1.on.aws", "x-forwarded-proto": "https"},
    "requestContext": {"http": {"method": "GET", "path": "/healthz", "protocol": "HTTP/1.1",
                                "sourceIp": "203.0.113.7", "userAgent": "bench"},
                       "domainName": "abcdefgh.lambda-url.eu-west-1.on.aws", "stage": "$default",
                       "requestId": "bench"},
    "isBase64Encoded": False,
}
#: Child process: build the handler, answer the first event (print when done), then time warm events.
LAMBDA_CHILD = """
import json, statistics, sys, time
event = json.loads(sys.argv[2])
if sys.argv[1] == "ours":
    from receiver.serverless import handler
else:
    from mangum import Mangum
    from bench.bare import app
    handler = Mangum(app, lifespan="off")
assert handler(event, None)["statusCode"] == 200
print("first", flush=True)
warm = []
for _ in range(200):
    t = time.perf_counter()
    assert handler(event, None)["statusCode"] == 200
    warm.append(time.perf_counter() - t)
print(statistics.median(warm), flush=True)
"""


def _lambda_first_event(which: str, env: dict[str, str]) -> tuple[float, float]:
    """(process start to the first event answered, median warm event) in seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-c", LAMBDA_CHILD, which, json.dumps(HEALTHZ_EVENT)], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "first":
            raise RuntimeError(f"the {which} Lambda handler did not answer its first event")
        first = time.perf_counter() - start
        warm = float(process.stdout.readline())
        return first, warm
    finally:
        process.wait(30)


def _import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    return float(out.stdout)


def measure(rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {"FLUXHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}", "FLUXHOOK_ALLOW_HTTP": "1",
               "FLUXHOOK_SECRET_KEY": "cold-start-key-0123456789abcdef0123456789",
               "FLUXHOOK_DB": f"{tmp}/cold.db", "FLUXHOOK_RESULTS": f"{tmp}/results"}
        ours = [sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning"]
        bare = [sys.executable, "-m", "uvicorn", "bench.bare:app", "--port", str(port), "--log-level", "warning"]
        start_ours, start_bare, imp_ours, imp_bare = [], [], [], []
        lambda_ours: list[tuple[float, float]] = []
        lambda_bare: list[tuple[float, float]] = []
        for _ in range(rounds):
            start_bare.append(_first_2xx(bare, env, port))
            start_ours.append(_first_2xx(ours, env, port))
            imp_bare.append(_import_time("starlette.applications"))
            imp_ours.append(_import_time("receiver.app"))
        # Lambda: a fresh database migrated first (the deploy step); the handler itself never migrates.
        lambda_env = {**env, "FLUXHOOK_DB": f"{tmp}/lambda.db"}
        subprocess.run([sys.executable, "-m", "receiver.cli", "migrate"], env={**os.environ, **lambda_env},
                       check=True, capture_output=True)
        for _ in range(rounds):
            lambda_bare.append(_lambda_first_event("bare", lambda_env))
            lambda_ours.append(_lambda_first_event("ours", lambda_env))
    a, b = statistics.median(start_ours) * 1000, statistics.median(start_bare) * 1000
    c, d = statistics.median(imp_ours) * 1000, statistics.median(imp_bare) * 1000
    e, f = (statistics.median(x[0] for x in runs) * 1000 for runs in (lambda_ours, lambda_bare))
    g, h = (statistics.median(x[1] for x in runs) * 1e6 for runs in (lambda_ours, lambda_bare))
    return {"name": "cold start", "rows": [
        {"metric": "process start to first /healthz 2xx", "value": round(a, 1), "unit": "ms", "baseline": round(b, 1),
         "ratio": round(a / b, 2), "note": "baseline: bare Starlette under uvicorn; ours opens SQLite and migrates"},
        {"metric": "import receiver.app", "value": round(c, 1), "unit": "ms", "baseline": round(d, 1),
         "ratio": round(c / d, 2), "note": "baseline: import starlette.applications"},
        {"metric": "Lambda: process start to first /healthz event answered", "value": round(e, 1), "unit": "ms",
         "baseline": round(f, 1), "ratio": round(e / f, 2),
         "note": "import receiver.serverless + handler(event); ours opens SQLite (no migration); "
                 "baseline: bare Starlette under Mangum"},
        {"metric": "Lambda: warm /healthz event", "value": round(g, 1), "unit": "us", "baseline": round(h, 1),
         "ratio": round(g / h, 2), "note": "median of 200 in the same process; baseline: bare Starlette under Mangum"},
    ], "environment": {"rounds": rounds}}


async def run(size: str = "full") -> dict[str, object]:
    return await asyncio.to_thread(measure, 1 if size == "tiny" else 7)


if __name__ == "__main__":
    main(run)

"""Cold start: from process start to the first 2xx on /healthz, and the import time of the app
module, each against a baseline measured in the same run (bare Starlette served by uvicorn, and
`import starlette.applications`)."""

from __future__ import annotations

import asyncio
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
        for _ in range(rounds):
            start_bare.append(_first_2xx(bare, env, port))
            start_ours.append(_first_2xx(ours, env, port))
            imp_bare.append(_import_time("starlette.applications"))
            imp_ours.append(_import_time("receiver.app"))
    a, b = statistics.median(start_ours) * 1000, statistics.median(start_bare) * 1000
    c, d = statistics.median(imp_ours) * 1000, statistics.median(imp_bare) * 1000
    return {"name": "cold start", "rows": [
        {"metric": "process start to first /healthz 2xx", "value": round(a, 1), "unit": "ms", "baseline": round(b, 1),
         "ratio": round(a / b, 2), "note": "baseline: bare Starlette under uvicorn; ours opens SQLite and migrates"},
        {"metric": "import receiver.app", "value": round(c, 1), "unit": "ms", "baseline": round(d, 1),
         "ratio": round(c / d, 2), "note": "baseline: import starlette.applications"},
    ], "environment": {"rounds": rounds}}


async def run(size: str = "full") -> dict[str, object]:
    return await asyncio.to_thread(measure, 1 if size == "tiny" else 7)


if __name__ == "__main__":
    main(run)

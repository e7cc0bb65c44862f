"""Cold start: from process start to the first 2xx on /healthz, and the import time of the app
module, each against a baseline measured in the same run (bare Starlette served by uvicorn, and
`import starlette.applications`), alternating ours and the baseline, median of the rounds.

Both sides import from bytecode, as an installed package does (pip compiles what it installs; the
baseline's site-packages are compiled): the children share a bytecode cache in a temporary folder
(PYTHONPYCACHEPREFIX), filled by one untimed run of each command. Where the environment sets
PYTHONDONTWRITEBYTECODE (a checkout that never writes __pycache__), the start is also measured that way,
our modules then compiled from source at every start: a row of its own. Beside each wall time, the
CPU time the process used (a row for the start, the note for the import): on a machine shared with
other work, the wall time stretches with the load, the CPU time hardly does.

And the AWS Lambda handler: a fresh process that imports `receiver.serve.aws_lambda` and answers its
first event (a /healthz API Gateway HTTP API v2 event), then warm events in the same process,
against bare Starlette under Mangum doing the same. The database is migrated beforehand, as the
deploy step (`fluxhook migrate`) would."""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._cli import main
from bench._setup import free_port


def _healthz_2xx(port: int) -> bool:
    """One plain GET /healthz (http.client: no client set-up, no CA bundle loaded per try, so polling
    every few ms takes little CPU from the process starting on the same cores)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status < 300
    finally:
        connection.close()


#: Timed runs: (wall seconds, CPU seconds of the process or None), e.g. to the first 2xx.
Start = list[tuple[float, float | None]]


def _cpu_seconds(pid: int) -> float | None:
    """CPU time the process has used so far, all its threads (Linux: /proc/PID/task/*/schedstat, in ns)."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _first_2xx(command: list[str], env: dict[str, str], port: int) -> tuple[float, float | None]:
    """(seconds from process start to the first 2xx, CPU seconds the process used by then or None).

    The CPU time does not grow when other work on the machine delays the start, the wall time does."""
    start = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while time.perf_counter() - start < 30:
            try:
                if _healthz_2xx(port):
                    return time.perf_counter() - start, _cpu_seconds(process.pid)
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.002)
        raise RuntimeError("no 2xx within 30 s")
    finally:
        process.terminate()
        process.wait(10)


def _compiled(cache: str) -> dict[str, str]:
    """The environment with bytecode read from and written to `cache`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": cache}


def _from_source() -> dict[str, str] | None:
    """The environment as given, if it keeps our modules from being cached (PYTHONDONTWRITEBYTECODE
    and no __pycache__ of ours): each start compiles them. Else None."""
    spec = importlib.util.find_spec("receiver.web.app")
    origin = spec.origin if spec is not None else None
    if not os.environ.get("PYTHONDONTWRITEBYTECODE") or origin is None:
        return None
    if Path(importlib.util.cache_from_source(origin)).exists() or os.environ.get("PYTHONPYCACHEPREFIX"):
        return None
    return dict(os.environ)


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
    from receiver.serve.aws_lambda import handler
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
        [sys.executable, "-c", LAMBDA_CHILD, which, json.dumps(HEALTHZ_EVENT)], env=env,
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


def _import_time(module: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds `import module` takes in a fresh interpreter."""
    code = (f"import time; t, c = time.perf_counter(), time.process_time(); import {module}; "
            "print(time.perf_counter() - t, time.process_time() - c)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,  # noqa: S603
                         env=env)
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


def measure(rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        ours_env = {"FLUXHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}", "FLUXHOOK_ALLOW_HTTP": "1",
                    "FLUXHOOK_SECRET_KEY": "cold-start-key-0123456789abcdef0123456789",
                    "FLUXHOOK_DB": f"{tmp}/cold.db", "FLUXHOOK_RESULTS": f"{tmp}/results"}
        env = {**_compiled(f"{tmp}/pycache"), **ours_env}
        source = _from_source()
        ours = [sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning"]
        bare = [sys.executable, "-m", "uvicorn", "bench.bare:app", "--port", str(port), "--log-level", "warning"]
        # Untimed: fills the bytecode cache (and the OS's file cache) for every command timed below.
        for command in (bare, ours):
            _first_2xx(command, env, port)
        for module in ("starlette.applications", "receiver.web.app"):
            _import_time(module, env)
        start_ours: Start = []
        start_bare: Start = []
        source_ours: Start = []
        source_bare: Start = []
        imp_ours: Start = []
        imp_bare: Start = []
        lambda_ours: list[tuple[float, float]] = []
        lambda_bare: list[tuple[float, float]] = []
        for _ in range(rounds):
            start_bare.append(_first_2xx(bare, env, port))
            start_ours.append(_first_2xx(ours, env, port))
            imp_bare.append(_import_time("starlette.applications", env))
            imp_ours.append(_import_time("receiver.web.app", env))
            if source is not None:
                source_bare.append(_first_2xx(bare, {**source, **ours_env}, port))
                source_ours.append(_first_2xx(ours, {**source, **ours_env}, port))
        # Lambda: a fresh database migrated first (the deploy step); the handler itself never migrates.
        lambda_env = {**env, "FLUXHOOK_DB": f"{tmp}/lambda.db"}
        subprocess.run([sys.executable, "-m", "receiver.cli", "migrate"], env=lambda_env,
                       check=True, capture_output=True)
        _lambda_first_event("bare", lambda_env)
        _lambda_first_event("ours", lambda_env)
        for _ in range(rounds):
            lambda_bare.append(_lambda_first_event("bare", lambda_env))
            lambda_ours.append(_lambda_first_event("ours", lambda_env))

    def ms(runs: list[float]) -> float:
        return statistics.median(runs) * 1000

    def runs_ms(runs: list[float]) -> str:
        return "[" + ", ".join(f"{x * 1000:.0f}" for x in runs) + "]"

    def walls(runs: Start) -> list[float]:
        return [wall for wall, _ in runs]

    def cpus(runs: Start) -> list[float]:
        return [cpu for _, cpu in runs if cpu is not None]

    wall_ours, wall_bare, cpu_ours, cpu_bare = walls(start_ours), walls(start_bare), cpus(start_ours), cpus(start_bare)
    a, b, c, d = ms(wall_ours), ms(wall_bare), ms(walls(imp_ours)), ms(walls(imp_bare))
    e, f = (statistics.median(x[0] for x in runs) * 1000 for runs in (lambda_ours, lambda_bare))
    g, h = (statistics.median(x[1] for x in runs) * 1e6 for runs in (lambda_ours, lambda_bare))
    rows: list[dict[str, object]] = [
        {"metric": "process start to first /healthz 2xx", "value": round(a, 1), "unit": "ms", "baseline": round(b, 1),
         "ratio": round(a / b, 2),
         "note": "target <= 1.3; baseline: bare Starlette under uvicorn; ours opens SQLite and migrates; "
                 f"runs ms ours {runs_ms(wall_ours)}, bare {runs_ms(wall_bare)}"},
        {"metric": "import receiver.web.app", "value": round(c, 1), "unit": "ms", "baseline": round(d, 1),
         "ratio": round(c / d, 2),
         "note": f"target <= 1.2; baseline: import starlette.applications; CPU ms {ms(cpus(imp_ours)):.0f} vs "
                 f"{ms(cpus(imp_bare)):.0f} ({ms(cpus(imp_ours)) / ms(cpus(imp_bare)):.2f}x); "
                 f"runs ms ours {runs_ms(walls(imp_ours))}, baseline {runs_ms(walls(imp_bare))}"},
    ]
    if cpu_ours and cpu_bare:
        k, m = ms(cpu_ours), ms(cpu_bare)
        rows.insert(1, {"metric": "CPU time of the process to first /healthz 2xx", "value": round(k, 1), "unit": "ms",
                        "baseline": round(m, 1), "ratio": round(k / m, 2),
                        "note": "the same starts: all threads' CPU time when the first 2xx arrived (/proc schedstat); "
                                f"unlike wall time, not stretched by other load; runs ms ours {runs_ms(cpu_ours)}, "
                                f"bare {runs_ms(cpu_bare)}"})
    if source is not None:
        i, j = ms(walls(source_ours)), ms(walls(source_bare))
        rows.append({"metric": "process start to first /healthz 2xx, our modules compiled from source",
                     "value": round(i, 1), "unit": "ms", "baseline": round(j, 1), "ratio": round(i / j, 2),
                     "note": "as this environment runs (PYTHONDONTWRITEBYTECODE, no __pycache__ of ours); "
                             "site-packages compiled; "
                             f"runs ms ours {runs_ms(walls(source_ours))}, bare {runs_ms(walls(source_bare))}"})
    rows += [
        {"metric": "Lambda: process start to first /healthz event answered", "value": round(e, 1), "unit": "ms",
         "baseline": round(f, 1), "ratio": round(e / f, 2),
         "note": "import receiver.serve.aws_lambda + handler(event); ours opens SQLite (no migration); "
                 "baseline: bare Starlette under Mangum"},
        {"metric": "Lambda: warm /healthz event", "value": round(g, 1), "unit": "us", "baseline": round(h, 1),
         "ratio": round(g / h, 2), "note": "median of 200 in the same process; baseline: bare Starlette under Mangum"},
    ]
    return {"name": "cold start", "rows": rows,
            "environment": {"rounds": rounds, "bytecode": "cached in a temporary folder, filled by an untimed run"}}


async def run(size: str = "full") -> dict[str, object]:
    return await asyncio.to_thread(measure, 1 if size == "tiny" else 7)


if __name__ == "__main__":
    main(run)

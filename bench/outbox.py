"""The event outbox: how soon a finished job reaches a webhook endpoint and an SSE client, and how
fast the relay delivers a backlog, against the callback ingest rate of the same run.

    python -m bench --only outbox          # 500 jobs, a 3,000-event backlog (about a minute)
    python -m bench --only outbox --tiny   # 20 jobs, a 300-event backlog (smoke run, ~15 s)
    python -m bench.outbox [--tiny]        # the same, printed as JSON

Both parts run a real `fluxhook serve` (SQLite, synchronous=FULL, one process; pinned to CPU 0
where `taskset` exists, this process to CPU 1; FLUXHOOK_BENCH_NO_PIN=1 lets the OS place them)
with FLUXHOOK_FORWARD_URL pointing at a webhook endpoint in this process: a minimal asyncio
HTTP/1.1 server that notes the arrival time (time.time()) of each POST, answers 200 at once and
then checks its Standard Webhooks signature. Same machine, same clock as the receiver's.

1. Latency. The provider simulator runs here (zero runtime, callbacks on); an SSE client is
   connected to `GET /v1/events?types=job.stored` first, then jobs are submitted through
   `POST /v1/jobs` at a moderate rate (20/s), so nothing is saturated. For each job's job.stored
   event (default FLUXHOOK_FORWARD_EVENTS):
   - commit -> webhook / SSE: arrival minus the event's own `created_at` (the receiver's clock
     when it recorded the status change; milliseconds). Baseline: the round trip of a bare POST
     of a same-sized body from an httpx client here to the same endpoint (the floor of any
     delivery on this machine).
   - terminal callback -> webhook / SSE: arrival minus the moment the simulator sent the job's
     terminal ("Ready") callback (an httpx request hook). This includes the ack, the download
     of the result from the simulator and its storing. Baseline: terminal callback -> the
     job.stored commit (`created_at`), i.e. the same path without the outbox.
2. Throughput. A fresh ledger of jobs (submitted, as bench/ingest.py fills it) and the webhook
   sink registered in it but disabled (as `410 Gone` leaves one; FLUXHOOK_FORWARD_EVENTS=job.running).
   Unique BFL progress callbacks are sent to the receiver over 16 keep-alive connections (the
   warm-up gives every job its first one, so each job has one job.running event waiting; the
   measured run then sends progress updates for a fixed time, like bench/ingest.py's wrk run
   but from an asyncio client here: wrk is not required): that is the ingest rate, callbacks/s
   answered 2xx. Then the sink is enabled (what `fluxhook sinks --enable` does) and the relay
   drains the backlog: events/s from the first to the last arrival at the endpoint. The ratio
   relay/ingest says whether the relay keeps up with the callbacks that make events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bench._cli import main
from bench._setup import MASTER, environment, free_port, percentile
from receiver.engine.jobs import callback_url
from receiver.serve.background import serve_in_background
from receiver.sinks.webhook import WebhookSink
from receiver.store import Job, open_store
from submitter.signing import sign_standard
from submitter.simulator import Faults, Simulator
from submitter.status import Status

PROJECT = Path(__file__).resolve().parent.parent
API_KEY = "bench-outbox-api-key-0123456789"
SECRET = "whsec_" + base64.b64encode(b"bench-outbox-forward-secret-0123").decode()
SIZES = {
    # jobs and submissions/s (latency), backlog events and measured ingest seconds (throughput),
    # the longest wait for a wave of jobs, bursts of BURST jobs (latency after a quiet spell)
    "tiny": {"jobs": 20, "rate": 10.0, "backlog": 300, "seconds": 1.0, "wait": 20.0, "waves": 2},
    "full": {"jobs": 500, "rate": 20.0, "backlog": 3000, "seconds": 5.0, "wait": 90.0, "waves": 6},
}
CONNECTIONS = 16
BURST = 12
BASELINE_POSTS = 200


def _pinned() -> bool:
    return bool(not os.environ.get("FLUXHOOK_BENCH_NO_PIN") and shutil.which("taskset")
                and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"))


@contextlib.contextmanager
def _this_process_on(cpu: int) -> Any:
    """This (event-loop) thread on one CPU while measuring; restored afterwards."""
    if not _pinned():
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- the webhook endpoint ---------------------------------------------------------------------


class Endpoint:
    """A minimal HTTP/1.1 server: notes each webhook's arrival, answers 200 at once, then checks it."""

    def __init__(self) -> None:
        self.arrivals: dict[str, tuple[float, dict[str, Any]]] = {}
        self.duplicates = 0
        self.bad_signatures = 0
        self.unparsable = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Endpoint:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/webhook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers: dict[str, str] = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                arrived = time.time()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                self._note(arrived, headers, body)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _note(self, arrived: float, headers: dict[str, str], body: bytes) -> None:
        msg_id = headers.get("webhook-id")
        if msg_id is None:  # the baseline's plain POSTs
            return
        try:
            envelope = json.loads(body)
            expected = sign_standard(SECRET, msg_id, int(headers["webhook-timestamp"]), body)
        except (ValueError, KeyError):
            self.unparsable += 1
            return
        if expected not in headers.get("webhook-signature", "").split():
            self.bad_signatures += 1
        if msg_id in self.arrivals:
            self.duplicates += 1
            return
        self.arrivals[msg_id] = (arrived, envelope)


# -- the receiver -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def receiver(env: dict[str, str], port: int, log: Path) -> AsyncIterator[str]:
    """`fluxhook serve` on `port` (on CPU 0 if pinning), until the block exits; yields its URL."""
    pin = ["taskset", "-c", "0"] if _pinned() else []
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            *pin, sys.executable, "-m", "receiver.cli", "serve", "--port", str(port), "--log-level", "warning",
            cwd=PROJECT, env={**os.environ, **env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )
        try:
            async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
                deadline = time.monotonic() + 30
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{url}/healthz")).status_code == 200:
                            break
                    if process.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"fluxhook serve did not start; see {log}:\n{log.read_text()[-2000:]}")
                    await asyncio.sleep(0.05)
            yield url
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


# -- 1. latency -------------------------------------------------------------------------------


async def sse_client(url: str, seen: dict[str, tuple[float, dict[str, Any]]], connected: asyncio.Event) -> None:
    headers = {"authorization": f"Bearer {API_KEY}", "accept": "text/event-stream"}
    timeout = httpx.Timeout(10.0, read=None)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http, http.stream(
        "GET", f"{url}/v1/events", params={"types": "job.stored"}, headers=headers
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            arrived = time.time()
            if line.startswith("retry:"):
                connected.set()
            elif line.startswith("data:"):
                envelope = json.loads(line[5:])
                seen.setdefault(envelope["id"], (arrived, envelope))


async def bare_posts(url: str, size: int) -> list[float]:
    """Round trips of plain POSTs to the endpoint: the floor of a delivery here."""
    body = b"x" * size
    times = []
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
        for i in range(BASELINE_POSTS + 10):
            began = time.perf_counter()
            (await http.post(url, content=body, headers={"content-type": "application/json"})).raise_for_status()
            if i >= 10:  # the first few open the connection and warm up
                times.append(time.perf_counter() - began)
    return times


async def latency(tmp: Path, name: str, jobs: int, rate: float, wait: float, *, waves: int = 1,
                  pause: float = 1.0) -> dict[str, Any]:
    """`waves` times: `jobs` jobs submitted at `rate` per second, then wait until each is at both."""
    callbacks_sent: dict[str, float] = {}

    async def note_callback(request: httpx.Request) -> None:
        parts = request.url.path.split("/")  # /hooks/bfl/{job}/{token}
        if len(parts) >= 4 and parts[1] == "hooks":
            callbacks_sent.setdefault(parts[3], time.time())

    callback_answers: dict[int, int] = {}

    async def note_answer(response: httpx.Response) -> None:
        if response.request.url.path.startswith("/hooks/"):
            callback_answers[response.status_code] = callback_answers.get(response.status_code, 0) + 1

    sim_http = httpx.AsyncClient(timeout=30.0, trust_env=False,
                                 event_hooks={"request": [note_callback], "response": [note_answer]})
    sim = Simulator(http=sim_http, default_faults=Faults(runtime=0.0))
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    log = tmp / f"{name}-serve.log"
    sse: dict[str, tuple[float, dict[str, Any]]] = {}
    submitted: list[str] = []
    submit_errors: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(sim.aclose)
        stack.push_async_callback(sim_http.aclose)
        sim_url = await stack.enter_async_context(serve_in_background(sim.app))
        endpoint = await stack.enter_async_context(Endpoint())
        env = environment(tmp / name, sim_url, public, FLUXHOOK_API_KEYS=API_KEY,
                          FLUXHOOK_FORWARD_URL=endpoint.url, FLUXHOOK_FORWARD_SECRET=SECRET)
        (tmp / name).mkdir()
        url = await stack.enter_async_context(receiver(env, port, log))
        connected = asyncio.Event()
        reader = asyncio.create_task(sse_client(url, sse, connected))
        try:
            await asyncio.wait_for(connected.wait(), 10)
            floor = await bare_posts(endpoint.url, 1200)
            async with httpx.AsyncClient(trust_env=False, timeout=30.0) as http:
                auth = {"authorization": f"Bearer {API_KEY}"}

                async def submit(i: int) -> None:
                    try:
                        answer = await http.post(f"{url}/v1/jobs", headers=auth, json={
                            "provider": "bfl", "model": "flux-dev", "params": {"prompt": f"outbox bench {i}"}})
                        answer.raise_for_status()
                        submitted.append(answer.json()["id"])
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        submit_errors.append(f"{type(exc).__name__}: {exc}")

                def stored(seen: dict[str, tuple[float, dict[str, Any]]]) -> set[str]:
                    return {e["data"]["id"] for _, e in seen.values() if e["type"] == "job.stored"}

                for wave in range(waves):
                    if wave:
                        await asyncio.sleep(pause)  # quiet: the relay and the feed are idle again
                    started = time.monotonic()
                    tasks = []
                    for i in range(jobs):
                        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                        tasks.append(asyncio.create_task(submit(wave * jobs + i)))
                    await asyncio.gather(*tasks)
                    end = time.monotonic() + wait
                    # Polling a condition two tasks feed (the endpoint and the SSE reader): good enough here.
                    while time.monotonic() < end and not (  # noqa: ASYNC110
                            set(submitted) <= stored(sse) & stored(endpoint.arrivals)):
                        await asyncio.sleep(0.1)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await reader
    mine = set(submitted)

    def by_job(seen: dict[str, tuple[float, dict[str, Any]]]) -> dict[str, tuple[float, float]]:
        """job id -> (arrival, created_at) of its job.stored event."""
        return {e["data"]["id"]: (t, _parse_time(e["created_at"])) for t, e in seen.values()
                if e["type"] == "job.stored" and e["data"]["id"] in mine}

    hooks, stream = by_job(endpoint.arrivals), by_job(sse)
    result: dict[str, Any] = {
        "jobs": jobs * waves, "submitted": len(submitted), "submit_errors": submit_errors[:5],
        "webhooks": len(hooks), "sse_events": len(stream),
        "missing_webhooks": len(mine - hooks.keys()), "missing_sse": len(mine - stream.keys()),
        "duplicate_webhooks": endpoint.duplicates, "bad_signatures": endpoint.bad_signatures,
        "unparsable_webhooks": endpoint.unparsable, "serve_errors": error_lines(log)[:10],
        "callback_answers": {str(k): v for k, v in sorted(callback_answers.items())},
        "floor_ms": [t * 1000 for t in floor],
        "commit_to_webhook_ms": [(t - c) * 1000 for t, c in hooks.values()],
        "commit_to_sse_ms": [(t - c) * 1000 for t, c in stream.values()],
        "callback_to_webhook_ms": [(t - callbacks_sent[j]) * 1000 for j, (t, _) in hooks.items()
                                   if j in callbacks_sent],
        "callback_to_sse_ms": [(t - callbacks_sent[j]) * 1000 for j, (t, _) in stream.items()
                               if j in callbacks_sent],
        "callback_to_commit_ms": [(c - callbacks_sent[j]) * 1000 for j, (_, c) in {**stream, **hooks}.items()
                                  if j in callbacks_sent],
    }
    return result


# -- 2. ingest and relay throughput -----------------------------------------------------------


async def fill(db: str, count: int, sink: WebhookSink) -> None:
    """`count` submitted jobs, and the webhook sink registered before them and disabled."""
    store = open_store(db)
    await store.open()
    now, slots = time.time(), asyncio.Semaphore(10)
    await store.register_sink(sink.name, sink.kind, sink.display, now=now)
    await store.disable_sink(sink.name, "bench: a backlog builds up", now=now)

    async def submitted(i: int) -> None:
        async with slots:
            job = Job(id=f"fh_outbox{i:06d}", provider="bfl", model="flux-dev", params={}, status=Status.QUEUED,
                      created_at=now, deadline_at=now + 86400)
            await store.create_job(job)
            await store.record_submit(job.id, f"task-{i}", None, now=now, next_check_at=now + 86400)

    try:
        await asyncio.gather(*(submitted(i) for i in range(count)))
    finally:
        await store.close()


async def send_callbacks(port: int, hooks: list[tuple[str, str]], *, count: int | None = None,
                         seconds: float | None = None, first: int = 0) -> dict[str, float]:
    """Unique BFL progress callbacks (callback n to hook n mod len(hooks), progress n) over
    CONNECTIONS keep-alive connections: `count` of them, or as many as fit in `seconds`."""
    counter = first
    last = first + count if count is not None else None
    answered = failed = 0
    stop_at = time.perf_counter() + seconds if seconds is not None else None

    async def worker() -> None:
        nonlocal counter, answered, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (last is None or counter < last) and (stop_at is None or time.perf_counter() < stop_at):
                n, counter = counter, counter + 1
                path, task = hooks[n % len(hooks)]
                body = f'{{"task_id":"{task}","status":"processing","progress":{n}}}'.encode()
                writer.write((f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                              f"content-length: {len(body)}\r\n\r\n").encode() + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if head[9:10] == b"2":
                    answered += 1
                else:
                    failed += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - began
    return {"answered_2xx": answered, "non_2xx": failed, "seconds": elapsed, "per_s": answered / elapsed,
            "next": counter}


async def throughput(tmp: Path, backlog: int, seconds: float, wait: float) -> dict[str, Any]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    work = tmp / "relay"
    work.mkdir()
    log = tmp / "relay-serve.log"
    async with Endpoint() as endpoint:
        # No provider is called and nothing is due; the 1 s sweep interval is how soon the relay
        # looks again by itself (it is not woken by the sink being enabled from another process).
        env = environment(work, "http://127.0.0.1:9", public, FLUXHOOK_POLL_AFTER="86400",
                          FLUXHOOK_SWEEP_INTERVAL="1",
                          FLUXHOOK_FORWARD_URL=endpoint.url, FLUXHOOK_FORWARD_SECRET=SECRET,
                          FLUXHOOK_FORWARD_EVENTS="job.running")
        sink = WebhookSink(endpoint.url, SECRET, frozenset({"job.running"}), 15.0)
        db = env["FLUXHOOK_DB"]
        await fill(db, backlog, sink)
        hooks = []
        for i in range(backlog):
            url, _ = callback_url(public, MASTER.encode(), "bfl", f"fh_outbox{i:06d}")
            hooks.append((url.removeprefix(public), f"task-{i}"))
        async with receiver(env, port, log):
            # Warm-up: every job's first progress callback (its job.running event, the backlog).
            warm = await send_callbacks(port, hooks, count=backlog)
            measured = await send_callbacks(port, hooks, seconds=seconds, first=warm["next"])
            store = open_store(db)
            await store.open()
            try:
                events = len(await store.events_after(0, limit=backlog * 3, types=frozenset({"job.running"})))
                enabled = time.time()
                await store.enable_sink(sink.name, now=enabled)
            finally:
                await store.close()
            end = time.monotonic() + wait
            while len(endpoint.arrivals) < events and time.monotonic() < end:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # arrival times are taken by the endpoint
            await asyncio.sleep(0.2)  # anything delivered twice shows up meanwhile
        times = sorted(t for t, _ in endpoint.arrivals.values())
    drain = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "jobs": backlog, "backlog_events": events, "delivered": len(times),
        "relay_events_per_s": (len(times) - 1) / drain if drain > 0 else 0.0,
        "drain_s": drain, "enable_to_first_s": times[0] - enabled if times else None,
        "enable_to_last_s": times[-1] - enabled if times else None,
        "duplicate_webhooks": endpoint.duplicates, "bad_signatures": endpoint.bad_signatures,
        "unparsable_webhooks": endpoint.unparsable,
        "warm_up": {k: v for k, v in warm.items() if k != "next"},
        "ingest": {k: v for k, v in measured.items() if k != "next"},
        "serve_errors": error_lines(log)[:10],
    }


# -- the report -------------------------------------------------------------------------------


def _row(metric: str, value: float, unit: str, baseline: float | None, note: str = "") -> dict[str, Any]:
    value = round(value, 2)
    baseline = None if baseline is None else round(baseline, 2)
    ratio = round(value / baseline, 3) if baseline else None
    return {"metric": metric, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio, "note": note}


def _late(values: list[float]) -> int:
    return sum(1 for v in values if v > 1000)


def report(lat: dict[str, Any], burst: dict[str, Any], thr: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    n = len(lat["commit_to_webhook_ms"])

    def pair(name: str, key: str, base: str, note: str) -> None:
        values, floor = lat[key], lat[base]
        if not values:
            return
        for q in (50, 99):
            rows.append(_row(f"{name} p{q}", percentile(values, q), "ms", percentile(floor, q),
                             f"{note}; {len(values)} jobs" if q == 50 else f"max {max(values):.1f} ms"))

    floor_note = "baseline: a bare POST round trip to the same endpoint"
    pair("job.stored commit -> webhook", "commit_to_webhook_ms", "floor_ms",
         f"arrival at the endpoint - event created_at; {floor_note}")
    pair("job.stored commit -> SSE", "commit_to_sse_ms", "floor_ms",
         f"arrival at the SSE client - event created_at; {floor_note}")
    base_note = "baseline: terminal callback -> job.stored commit (ack, download, store; no outbox)"
    pair("terminal callback -> webhook", "callback_to_webhook_ms", "callback_to_commit_ms",
         f"from the simulator sending the Ready callback; {base_note}")
    pair("terminal callback -> SSE", "callback_to_sse_ms", "callback_to_commit_ms",
         f"from the simulator sending the Ready callback; {base_note}")
    hooks, stream = burst["commit_to_webhook_ms"], burst["commit_to_sse_ms"]
    if hooks and stream:
        rows.append(_row(f"bursts of {BURST} jobs: commit -> webhook max", max(hooks), "ms", max(stream),
                         f"baseline: commit -> SSE max of the same events; {burst['jobs'] // BURST} bursts 1 s"
                         f" apart, all submitted at once; webhook p50 {percentile(hooks, 50):.1f} ms,"
                         f" p99 {percentile(hooks, 99):.1f} ms; {_late(hooks)} of {len(hooks)} webhooks"
                         f" (and {_late(stream)} SSE events) over 1 s after their commit"))
    ingest = thr["ingest"]
    rows.append(_row("relay throughput", thr["relay_events_per_s"], "events/s", ingest["per_s"],
                     f"{thr['delivered']} of {thr['backlog_events']} backlog events, first to last arrival"
                     f" {thr['drain_s']:.2f} s (enable to last {thr['enable_to_last_s'] or 0:.2f} s);"
                     f" baseline: callback ingest, callbacks/s answered 2xx in the same run"
                     f" ({CONNECTIONS} conns, asyncio client; mostly repeat progress callbacks, as in bench/ingest.py);"
                     f" against the warm-up's callbacks that each made an event"
                     f" ({thr['warm_up']['per_s']:.0f}/s): {thr['relay_events_per_s'] / thr['warm_up']['per_s']:.3f}"))
    problems = {
        "missing_webhooks": lat["missing_webhooks"] + burst["missing_webhooks"],
        "missing_sse": lat["missing_sse"] + burst["missing_sse"],
        "submit_errors": len(lat["submit_errors"]) + len(burst["submit_errors"]),
        "undelivered_backlog": thr["backlog_events"] - thr["delivered"],
        "duplicate_webhooks": lat["duplicate_webhooks"] + burst["duplicate_webhooks"] + thr["duplicate_webhooks"],
        "bad_signatures": lat["bad_signatures"] + burst["bad_signatures"] + thr["bad_signatures"],
        "unparsable_webhooks": lat["unparsable_webhooks"] + burst["unparsable_webhooks"] + thr["unparsable_webhooks"],
        "ingest_non_2xx": ingest["non_2xx"] + thr["warm_up"]["non_2xx"],
        "serve_error_lines": len(lat["serve_errors"]) + len(burst["serve_errors"]) + len(thr["serve_errors"]),
    }
    if any(problems.values()) or not n:
        rows.append(_row("errors", sum(problems.values()), "", None,
                         f"should be 0: {problems}; see environment"))
    return rows


async def measure(size: str) -> dict[str, Any]:
    cfg = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="fluxhook-bench-outbox-") as tmpdir, _this_process_on(1):
        tmp = Path(tmpdir)
        lat = await latency(tmp, "latency", cfg["jobs"], cfg["rate"], cfg["wait"])
        burst = await latency(tmp, "burst", BURST, 1000.0, 10.0, waves=cfg["waves"], pause=1.0)
        thr = await throughput(tmp, cfg["backlog"], cfg["seconds"], cfg["wait"])
    def summary(found: dict[str, Any]) -> dict[str, Any]:
        out = {key: value for key, value in found.items() if not key.endswith("_ms")}
        for key in ("commit_to_webhook_ms", "commit_to_sse_ms", "callback_to_webhook_ms", "callback_to_sse_ms",
                    "callback_to_commit_ms", "floor_ms"):
            values = found[key]
            out[key] = ({"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2),
                         "max": round(max(values), 2), "mean": round(statistics.mean(values), 2),
                         "over_1s": _late(values), "n": len(values)} if values else None)
        return out

    return {
        "name": "outbox",
        "rows": report(lat, burst, thr),
        "environment": {
            "command": f"python -m bench --only outbox{' --tiny' if size == 'tiny' else ''}",
            "receiver": "fluxhook serve, SQLite (synchronous=FULL), one process"
                        + (", CPU 0; this process (endpoint, SSE client, simulator, load) CPU 1"
                           if _pinned() else ", not pinned"),
            "endpoint": "asyncio HTTP/1.1 server in this process, 200 at once, signature checked after",
            "latency": {**summary(lat), "rate_per_s": cfg["rate"], "events": "job.stored (default forward events)"},
            "bursts": {**summary(burst), "waves": cfg["waves"], "jobs_per_burst": BURST, "pause_s": 1.0},
            "throughput": {**thr, "forward_events": "job.running", "connections": CONNECTIONS},
        },
    }


async def run(size: str = "full") -> dict[str, Any]:
    return await measure(size)


if __name__ == "__main__":
    main(run)

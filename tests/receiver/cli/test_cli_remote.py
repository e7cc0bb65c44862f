"""`fluxhook events|cancel|retry|report|url|batch` through the /v1 API (FLUXHOOK_API_URL), against a live receiver.

The receiver (with its sweep and download workers) and the simulator are real uvicorn servers on loopback;
the CLI runs in a thread with an environment that names no database and an empty working directory, as on a
host that has none: after every test that folder is still empty (no `./fluxhook.db` made on the side).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from receiver.config.settings import Settings
from receiver.serve.background import bind, serve_in_background
from receiver.web.app import create_app
from submitter.simulator import Faults, Simulator
from tests.e2e.support import env_for
from tests.receiver.cli.test_cli_api import client_env, fluxhook  # noqa: F401 (a fixture)
from tests.receiver.results.test_results import BUCKET, aws_env, s3_endpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio

ADMIN = "admin-key-0123456789abcdef"
CI = "ci-key-0123456789abcdef"
WEB = "web-key-0123456789abcdef"
DASH = "dash-key-0123456789abcdef"
KEYS = f"ops:admin:{ADMIN},ci:submit:{CI},web:submit:{WEB},grafana:read:{DASH}"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@dataclass
class Served:
    url: str
    settings: Settings
    sim: Simulator


@contextlib.asynccontextmanager
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(default_faults=Faults(runtime=0.05), callback_retries=(0.05, 0.1))
    sim.add_rule("hold", Faults(drop=True, runtime=3600))
    sim.add_rule("doomed", Faults(outcome="error", runtime=0.05))
    async with serve_in_background(sim.app) as sim_url:
        yield sim, sim_url
    await sim.aclose()


@contextlib.asynccontextmanager
async def receiver(tmp_path: Path, sim: tuple[Simulator, str], **extra: str) -> AsyncIterator[Served]:
    """A receiver with the API on (four keys: admin, two submit keys, a read key), its ledger in tmp_path/server."""
    sock = bind()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = env_for(tmp_path / "server", sim[1], url) | {"FLUXHOOK_API_KEYS": KEYS, "FLUXHOOK_SSE_HEARTBEAT": "0.2"}
    settings = Settings.from_env(env | extra)
    (tmp_path / "server" / "results").mkdir(parents=True, exist_ok=True)
    async with serve_in_background(create_app(settings), sock):
        yield Served(url, settings, sim[0])


def submit_argv(prompt: str, *extra: str, provider: str = "bfl", model: str = "flux-dev") -> list[str]:
    return ["submit", "--provider", provider, "--model", model, "--prompt", prompt, *extra]


async def test_events_and_url_through_the_api(tmp_path: Path, client_env: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                              capsys: pytest.CaptureFixture[str]) -> None:
    async with simulator() as sim, receiver(tmp_path, sim) as s:
        code, out, err = await fluxhook(monkeypatch, capsys, s.url, *submit_argv("a fox", "--wait"), key=CI)
        assert code == 0, err
        job_id = out.splitlines()[0]

        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "events", job_id, key=CI)
        assert code == 0, err
        kinds = [line.split()[1] for line in out.splitlines() if ISO.match(line)]
        assert kinds[:2] == ["created", "submitted"] and "callback" in kinds and "event" in kinds
        assert "job.stored" in out and "said succeeded" in out and "now: stored" in out
        assert re.search(r" callback .*\[\d+\]", out) and "fluxhook replay ID" in out
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "events", job_id, "--json", key=CI)
        rows = json.loads(out)
        assert code == 0 and rows[0]["kind"] == "created" and all(ISO.fullmatch(r["at"]) for r in rows)
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "events", job_id, key=WEB)  # not its job
        assert code == 2 and "not_found" in err
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "events", job_id, key=DASH)
        assert code == 0 and "now: stored" in out

        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "url", job_id, key=CI)
        assert code == 0 and out.strip() == f"{s.url}/v1/jobs/{job_id}/files/0"
        assert "Authorization: Bearer $FLUXHOOK_API_KEY" in err and CI not in out + err
        async with httpx.AsyncClient() as http:  # the server runs on this event loop
            fetched = await http.get(out.strip(), headers={"authorization": f"Bearer {CI}"})
        assert fetched.status_code == 200 and fetched.content == (s.settings.results / job_id / "0.png").read_bytes()
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "url", job_id, "3", key=CI)
        assert code == 2 and "has no stored file 3 (files: [0])" in err
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "url", job_id, key=WEB)
        assert code == 2 and "not_found" in err
    assert list(client_env.iterdir()) == []  # `url` made no ./fluxhook.db


async def test_cancel_through_the_api(tmp_path: Path, client_env: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                      capsys: pytest.CaptureFixture[str]) -> None:
    async with simulator() as sim, receiver(tmp_path, sim) as s:
        argv = submit_argv("hold this", provider="replicate", model="black-forest-labs/flux-schnell")
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, *argv, key=CI)
        held = out.strip()
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "cancel", held, key=DASH)  # a read key
        assert code == 2 and "forbidden" in err
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "cancel", held, key=WEB)  # another key's job
        assert code == 2 and "not_found" in err
        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "cancel", held, key=CI)
        assert code == 0 and out.startswith(f"{held} canceled"), err
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "status", held, "--json", key=CI)
        assert json.loads(out)["status"] == "canceled"

        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, *submit_argv("a fox", "--wait"), key=CI)
        stored = out.splitlines()[0]
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "cancel", stored, key=CI)
        assert code == 1 and f"fluxhook cancel: {stored}: " in err
        assert "only queued, submitted and running jobs can be canceled" in err
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "cancel", "fh_nobody", key=CI)
        assert code == 2 and "not_found" in err
    assert list(client_env.iterdir()) == []


async def test_retry_and_report_through_the_api(tmp_path: Path, client_env: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    async with simulator() as sim:
        # A receiver that may not download from the simulator: the provider delivers, our download is refused.
        async with receiver(tmp_path, sim, FLUXHOOK_DOWNLOAD_HOSTS="cdn.elsewhere.example") as s:
            code, out, _ = await fluxhook(monkeypatch, capsys, s.url, *submit_argv("a fox", "--wait"), key=CI)
            assert code == 1 and "status=failed" in out
            job_id = out.splitlines()[0]
            code, out, _ = await fluxhook(monkeypatch, capsys, s.url, *submit_argv("doomed fox", "--wait"), key=WEB)
            doomed = out.splitlines()[0]
        # The operator fixes FLUXHOOK_DOWNLOAD_HOSTS and restarts it, on the same ledger.
        async with receiver(tmp_path, sim) as s:
            code, out, err = await fluxhook(monkeypatch, capsys, s.url, "report", "--json", key=ADMIN)
            assert code == 0, err
            report = json.loads(out)
            total = report["providers"][-1]
            assert total["provider"] == "total" and total["jobs"] == 2 and total["failed_download"] == 1
            assert total["paid_not_delivered"] == 1 and total["failed_by_provider"] == 1
            assert report["orphan_callbacks"] is None and report["since"] is None
            code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "report", "--json", key=CI)
            assert json.loads(out)["providers"][-1]["jobs"] == 1  # a submit key counts its own jobs only

            code, _, err = await fluxhook(monkeypatch, capsys, s.url, "retry", job_id, key=WEB)  # not its job
            assert code == 2 and "not_found" in err
            code, _, err = await fluxhook(monkeypatch, capsys, s.url, "retry", job_id, key=DASH)  # a read key
            assert code == 2 and "forbidden" in err
            code, out, err = await fluxhook(monkeypatch, capsys, s.url, "retry", job_id, "--timeout", "30", key=CI)
            assert code == 0, err
            assert "reopened" in err and "status=stored" in out and "file 0:" in out
            code, _, err = await fluxhook(monkeypatch, capsys, s.url, "retry", job_id, key=CI)
            assert code == 2 and "cannot be retried: it is stored" in err
            code, _, err = await fluxhook(monkeypatch, capsys, s.url, "retry", doomed, key=WEB)
            assert code == 2 and "never reported a result" in err
            code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "events", job_id, key=CI)
            assert out.index("job.failed") < out.index("job.stored")  # both ends of the job, in order

            code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "report", "--csv", key=DASH)
            rows = {r["provider"]: r for r in csv.DictReader(io.StringIO(out))}
            assert rows["total"]["stored"] == "1" and rows["total"]["paid_not_delivered"] == "0"
            code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "report", "--since", "1h", key=ADMIN)
            assert code == 0 and re.search(r"^since \d{4}-", out) and "rescued_by_poll" in out
            code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "report", "--since", "2100-01-01", key=ADMIN)
            assert code == 0 and "no jobs" in out
            code, _, err = await fluxhook(monkeypatch, capsys, s.url, "report", "--since", "yesterday-ish", key=ADMIN)
            assert code == 2 and "--since takes" in err
    assert list(client_env.iterdir()) == []


async def test_batch_through_the_api(tmp_path: Path, client_env: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                     capsys: pytest.CaptureFixture[str]) -> None:
    lines = [{"provider": "bfl", "model": "flux-dev", "prompt": f"fox {n}", "metadata": {"sku": n}} for n in range(3)]
    lines[1]["prompt"] = "doomed fox"
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    async with simulator() as sim, receiver(tmp_path, sim) as s:
        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "batch", str(batch), key=CI)
        assert code == 1, err
        assert f"{batch}: 3 job(s), 3 new, 0 already recorded" in err and "2 stored" in err and "1 failed" in err
        (failed,) = out.splitlines()
        assert failed.startswith("line 2: fh_") and " failed: " in failed
        submits = s.sim.stats()["totals"]["submit_requests"]

        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "batch", str(batch), "--json", key=CI)
        assert code == 1 and "3 job(s), 0 new, 3 already recorded (resumed)" in err
        shown = [json.loads(line) for line in out.splitlines()]
        assert [(r["line"], r["status"]) for r in shown] == [(1, "stored"), (2, "failed"), (3, "stored")]
        assert s.sim.stats()["totals"]["submit_requests"] == submits  # no line was sent twice

        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "status", shown[0]["id"], "--json", key=CI)
        assert json.loads(out)["status"] == "stored"
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "list", "--json", key=WEB)
        assert json.loads(out) == []  # the batch's jobs are the ci key's

        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "batch", str(batch), "--check", key=CI)
        assert code == 0 and "3 job line(s), all valid" in out
    assert list(client_env.iterdir()) == []


async def test_batch_through_the_api_stops_at_a_line_the_api_refuses(
    tmp_path: Path, client_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],  # noqa: F811
) -> None:
    batch = tmp_path / "prompts.jsonl"
    big = {"provider": "bfl", "model": "flux-dev", "prompt": "a fox", "metadata": {"notes": "x" * 20_000}}
    batch.write_text(json.dumps({"provider": "bfl", "model": "flux-dev", "prompt": "ok"}) + "\n" + json.dumps(big))
    async with simulator() as sim, receiver(tmp_path, sim) as s:
        code, _, err = await fluxhook(monkeypatch, capsys, s.url, "batch", str(batch), key=CI)
        assert code == 2 and f"{batch}:2: " in err and "metadata" in err and "run the batch again to resume" in err
        code, out, _ = await fluxhook(monkeypatch, capsys, s.url, "list", "--json", key=CI)
        assert len(json.loads(out)) == 1  # the line before it is recorded


async def test_url_through_the_api_presigns_object_storage(
    tmp_path: Path, client_env: Path, s3_endpoint: str, aws_env: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    results = f"s3://{BUCKET}/remote-{os.urandom(4).hex()}/results"
    async with simulator() as sim, receiver(tmp_path, sim, FLUXHOOK_RESULTS=results,
                                            FLUXHOOK_S3_ENDPOINT=s3_endpoint) as s:
        code, out, err = await fluxhook(monkeypatch, capsys, s.url, *submit_argv("a fox", "--wait"), key=CI)
        assert code == 0, err
        job_id = out.splitlines()[0]
        code, out, err = await fluxhook(monkeypatch, capsys, s.url, "url", job_id, "--expires", "120", key=CI)
        assert code == 0, err
        signed = out.strip()
        assert signed.startswith(f"{s3_endpoint}/{BUCKET}/") and "X-Amz-Expires=120" in signed and err == ""
        async with httpx.AsyncClient() as http:
            fetched = await http.get(signed)
        assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    assert list(client_env.iterdir()) == []

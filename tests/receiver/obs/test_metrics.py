"""GET /metrics: Prometheus text, per-app registries, values that move as jobs do, and its protection."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from receiver.config.keys import parse_api_keys
from receiver.engine.jobs import new_job, submit
from receiver.engine.sweep import sweep_once
from receiver.obs.metrics import Metrics, MetricsSetupError, multiprocess_dir
from submitter.simulator import Faults
from submitter.status import Status
from tests.harness import Harness, harness
from tests.receiver.engine.test_relay import HOOK, Endpoint, forwarding, wire
from tests.receiver.web.test_app import a_job, hook_path

pytestmark = pytest.mark.anyio
TOKEN = "metrics-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[3]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(h: Harness, **headers: str) -> dict:
    response = await h.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


async def test_a_callback_job_moves_callback_download_and_ledger_metrics(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        before = await scrape(h)
        assert value(before, "fluxhook_callbacks_total", provider="bfl", verdict="accepted") == 0
        assert value(before, "fluxhook_store_up") == 1
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.settle()
        h.clock.advance(7)
        await sweep_once(h.rt)
        assert (await h.rt.store.get_job(job.id)).status == Status.STORED  # type: ignore[union-attr]
        after = await scrape(h)
        assert value(after, "fluxhook_callbacks_total", provider="bfl", verdict="accepted") >= 1
        assert value(after, "fluxhook_callback_ack_seconds_count", provider="bfl") >= 1
        assert value(after, "fluxhook_jobs", status="stored") == 1
        assert value(after, "fluxhook_downloads_total", provider="bfl", outcome="stored") == 1
        assert value(after, "fluxhook_download_bytes_total", provider="bfl") > 0
        assert value(after, "fluxhook_download_seconds_count", provider="bfl", outcome="stored") == 1
        assert value(after, "fluxhook_submit_to_stored_seconds_count", provider="bfl") == 1
        assert value(after, "fluxhook_submit_to_stored_seconds_sum", provider="bfl") == pytest.approx(7.0)
        assert value(after, "fluxhook_url_margin_seconds_count", provider="bfl") == 1
        assert value(after, "fluxhook_polls_total", provider="bfl", outcome="answered") == 0


async def test_a_dropped_callback_counts_as_a_poll_rescue(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=0.0, drop=True)) as h:
        await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.settle()
        await sweep_once(h.rt)
        h.clock.advance(h.settings.poll_after)
        await sweep_once(h.rt)
        found = await scrape(h)
        assert value(found, "fluxhook_polls_total", provider="bfl", outcome="answered") == 1
        assert value(found, "fluxhook_poll_rescues_total", provider="bfl", status="succeeded") == 1
        assert value(found, "fluxhook_jobs", status="stored") == 1


async def test_refused_callbacks_are_counted_by_verdict(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job_id = await a_job(h)
        forged = hook_path("bfl", job_id).rsplit("/", 1)[0] + "/" + "A" * 43
        assert (await h.client.post(forged, content=b"{}")).status_code == 401
        unknown = hook_path("bfl", "fh_" + "0" * 32)
        body = json.dumps({"id": "x", "status": "Pending"}).encode()
        assert (await h.client.post(unknown, content=body)).status_code == 404
        found = await scrape(h)
        assert value(found, "fluxhook_callbacks_total", provider="bfl", verdict="rejected") == 1
        assert value(found, "fluxhook_callbacks_total", provider="bfl", verdict="unknown_job") == 1
        assert h.rt.metrics["rejected"] == 1  # /healthz's counters are unchanged


@pytest.mark.parametrize(("faults", "overrides", "reason", "status"), [
    (Faults(runtime=0.0, outcome="error"), {}, "provider_failure", Status.FAILED),
    (Faults(runtime=0.0, outcome="content_moderated"), {}, "moderated", Status.MODERATED),
    (Faults(runtime=0.0), {"download_hosts": ("elsewhere.test",)}, "rejected", Status.FAILED),
])
async def test_jobs_ending_without_files_count_as_lost_artifacts(
    tmp_path: Path, faults: Faults, overrides: dict, reason: str, status: Status
) -> None:
    async with harness(tmp_path, faults=faults, **overrides) as h:
        job = await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.settle()
        await sweep_once(h.rt)
        assert (await h.rt.store.get_job(job.id)).status == status  # type: ignore[union-attr]
        found = await scrape(h)
        assert value(found, "fluxhook_artifacts_lost_total", provider="bfl", reason=reason) == 1
        assert value(found, "fluxhook_jobs", status=str(status)) == 1


async def test_a_job_past_its_deadline_counts_as_lost(tmp_path: Path) -> None:
    async with harness(tmp_path, faults=Faults(runtime=1e9, drop=True)) as h:
        await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        h.clock.advance(h.settings.job_deadline + 1)
        await sweep_once(h.rt)
        found = await scrape(h)
        assert value(found, "fluxhook_artifacts_lost_total", provider="bfl", reason="deadline") == 1


async def test_deliveries_and_outbox_lag(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        endpoint = Endpoint(script=(500,))
        wire(h, {HOOK: endpoint})
        await h.rt.relay.register()
        # One event, made directly (a simulated job's callback may beat its submit answer: no job.submitted).
        job = await new_job(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.rt.store.finish(job.id, Status.CANCELED, now=h.clock.now)
        last = await h.rt.store.last_seq()
        (sink,) = await h.rt.store.sinks()
        found = await scrape(h)
        assert value(found, "fluxhook_outbox_last_seq") == last
        assert value(found, "fluxhook_outbox_lag_events", sink=sink.name) == last - sink.after_seq > 0
        await sweep_once(h.rt)  # fans out, the first attempt fails (500)
        found = await scrape(h)
        assert value(found, "fluxhook_deliveries_total", sink=sink.name, outcome="retrying") >= 1
        assert value(found, "fluxhook_outbox_lag_events", sink=sink.name) == 0
        h.clock.advance(3600)
        await h.rt.relay.run_once()
        found = await scrape(h)
        assert value(found, "fluxhook_deliveries_total", sink=sink.name, outcome="delivered") >= 1


async def test_a_store_that_does_not_answer_does_not_fail_the_scrape(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.rt.store.close()
        found = await scrape(h)
        assert value(found, "fluxhook_store_up") == 0
        assert ("fluxhook_jobs", frozenset({("status", "stored")})) not in found


async def test_apps_have_their_own_registries(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with harness(tmp_path / "a") as one, harness(tmp_path / "b") as two:
        one.rt.prom.callback("bfl", "accepted")
        assert value(await scrape(one), "fluxhook_callbacks_total", provider="bfl", verdict="accepted") == 1
        assert value(await scrape(two), "fluxhook_callbacks_total", provider="bfl", verdict="accepted") == 0


@pytest.mark.parametrize("configured", ["api-key", "metrics-token", "both"])
async def test_metrics_need_a_bearer_when_keys_are_configured(tmp_path: Path, configured: str) -> None:
    from tests.harness import make_settings

    base = make_settings(tmp_path)
    api_key = "api-key-0123456789abcdef-xyz"
    integrations = (dataclasses.replace(base.integrations, api_keys=parse_api_keys(api_key))
                    if configured != "metrics-token" else base.integrations)
    token = TOKEN if configured != "api-key" else None
    async with harness(tmp_path, integrations=integrations, metrics_token=token) as h:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}):
            response = await h.client.get("/metrics", headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in response.text and api_key not in response.text
        good = api_key if configured != "metrics-token" else TOKEN
        assert (await h.client.get("/metrics", headers={"authorization": f"Bearer {good}"})).status_code == 200
        if configured == "both":
            assert (await h.client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 200


async def test_metrics_are_open_without_keys(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        assert (await h.client.get("/metrics")).status_code == 200


_CHILD = """
import asyncio, sys
from receiver.obs.metrics import Metrics
m = Metrics()
if sys.argv[1] == "count":
    m.callback("bfl", "accepted")
    m.downloaded("bfl", "stored", 0.2, 1000)
else:
    sys.stdout.write(asyncio.run(m.render(None)).decode())
"""


def test_several_processes_share_one_multiprocess_dir(tmp_path: Path) -> None:
    """Workers on one host write to PROMETHEUS_MULTIPROC_DIR; any one's scrape sums all."""
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = str(REPO)

    def child(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=True)
        return done.stdout

    child("count")
    child("count")
    found = samples(child("render"))
    assert value(found, "fluxhook_callbacks_total", provider="bfl", verdict="accepted") == 2
    assert value(found, "fluxhook_download_bytes_total", provider="bfl") == 2000
    assert value(found, "fluxhook_download_seconds_count", provider="bfl", outcome="stored") == 2
    assert value(found, "fluxhook_store_up") == 1  # no store given: nothing to report down


async def test_the_exposition_names_follow_prometheus_conventions() -> None:
    text = (await Metrics(multiprocess="").render(None)).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert all(n.startswith("fluxhook_") for n in names)
    assert {"fluxhook_callbacks", "fluxhook_callback_ack_seconds", "fluxhook_download_bytes",
            "fluxhook_artifacts_lost", "fluxhook_deliveries", "fluxhook_jobs", "fluxhook_outbox_lag_events"} <= names
    assert "# TYPE fluxhook_callbacks_total counter" in text or "# TYPE fluxhook_callbacks counter" in text


def test_metrics_do_not_touch_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    Metrics(multiprocess="")
    Metrics(multiprocess="")
    assert set(REGISTRY._names_to_collectors) == before


_OPEN = """
import asyncio, sys
from receiver.engine.runtime import Runtime
from receiver.config.settings import Settings

async def main() -> None:
    async with Runtime.open(Settings.from_env()):
        print("opened")

asyncio.run(main())
"""


def test_a_missing_multiprocess_dir_stops_start_up_not_each_callback(tmp_path: Path) -> None:
    """Metrics are made on first use; with a shared folder configured they are made at start, so a
    folder that is not there fails `serve` at once instead of every callback after its commit."""
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing"), PYTHONPATH=str(REPO),
               FLUXHOOK_SECRET_KEY="k" * 40, FLUXHOOK_DB=str(tmp_path / "l.db"),
               FLUXHOOK_RESULTS=str(tmp_path / "results"), FLUXHOOK_PUBLIC_URL="https://hooks.example")
    done = subprocess.run([sys.executable, "-c", _OPEN], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "opened" not in done.stdout
    assert "PROMETHEUS_MULTIPROC_DIR=" in done.stderr and "missing is not a writable folder" in done.stderr
    (tmp_path / "missing").mkdir()
    done = subprocess.run([sys.executable, "-c", _OPEN], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "opened" in done.stdout, done.stderr


def test_the_other_spelling_of_the_multiprocess_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    """prometheus_client reads PROMETHEUS_MULTIPROC_DIR only; the other spelling would silently leave each
    worker counting alone, so it stops start-up naming the variable to set."""
    with pytest.raises(MetricsSetupError, match="rename the variable") as caught:
        multiprocess_dir({"PROMETHEUS_MULTIPROCESS_DIR": str(tmp_path)})
    assert "PROMETHEUS_MULTIPROC_DIR" in str(caught.value)
    assert multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}) == str(tmp_path)
    assert multiprocess_dir({}) is None


def test_the_cli_refuses_the_other_spelling_with_a_message_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("prometheus_multiproc")}
    env.update(PROMETHEUS_MULTIPROCESS_DIR=str(tmp_path), PYTHONPATH=str(REPO), FLUXHOOK_SECRET_KEY="k" * 40,
               FLUXHOOK_DB=str(tmp_path / "l.db"), FLUXHOOK_RESULTS=str(tmp_path / "results"))
    done = subprocess.run([sys.executable, "-m", "receiver.cli", "sweep"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "fluxhook sweep: error: PROMETHEUS_MULTIPROCESS_DIR is set" in done.stderr
    assert "Traceback" not in done.stderr

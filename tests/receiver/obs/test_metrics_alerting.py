"""GET /metrics ready for alerting: every known series at zero from a fresh start, no `_created` series,
`fluxhook_build_info`; promtool accepts the exposition and the shipped rules (which fire as their unit tests
say), and the rules and the Grafana dashboard read only metrics fluxhook exports.

promtool is Debian's `prometheus` package (.ci/run installs it); missing, these tests fail, loudly."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, generate_latest

from receiver.engine.jobs import submit
from receiver.engine.sweep import sweep_once
from receiver.obs.metrics import LABELS, Metrics
from tests.harness import harness
from tests.receiver.engine.test_relay import forwarding
from tests.receiver.obs.test_metrics import samples, scrape

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "fluxhook.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (.ci/run does)")
    return found


async def test_a_fresh_start_exports_every_known_series_at_zero(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        found = await scrape(h)
        (sink,) = h.rt.relay.sinks
    providers = [p for p, v in h.settings.providers.items() if v.api_key]
    assert providers
    for provider in providers:
        for name, key, values in (("fluxhook_callbacks_total", "verdict", LABELS["verdict"]),
                                  ("fluxhook_polls_total", "outcome", LABELS["poll"]),
                                  ("fluxhook_poll_rescues_total", "status", LABELS["rescued"]),
                                  ("fluxhook_downloads_total", "outcome", LABELS["download"]),
                                  ("fluxhook_artifacts_lost_total", "reason", LABELS["lost"])):
            for v in values:
                assert found[(name, frozenset({("provider", provider), (key, v)}))] == 0, (name, v)
        for name in ("fluxhook_callback_ack_seconds_count", "fluxhook_submit_to_stored_seconds_count",
                     "fluxhook_url_margin_seconds_count", "fluxhook_download_bytes_total"):
            assert found[(name, frozenset({("provider", provider)}))] == 0, name
    for outcome in ("delivered", "retrying", "dead"):
        assert found[("fluxhook_deliveries_total", frozenset({("sink", sink), ("outcome", outcome)}))] == 0
    for status in ("queued", "submitted", "running", "succeeded", "stored", "failed", "moderated", "expired",
                   "canceled"):
        assert found[("fluxhook_jobs", frozenset({("status", status)}))] == 0
    assert not [name for name, _ in found if name.endswith("_created")]


async def test_build_info_names_the_version_and_python(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        found = await scrape(h)
    labels = frozenset({("version", metadata.version("fluxhook")), ("python", platform.python_version())})
    assert found[("fluxhook_build_info", labels)] == 1


async def test_created_series_are_left_out_of_this_registry_only() -> None:
    """No process-wide switch: another registry in the same process keeps its `_created` series."""
    ours = Metrics(multiprocess="", providers=["bfl"])
    ours.callback("bfl", "accepted")
    assert "_created" not in (await ours.render(None)).decode()
    other = CollectorRegistry()
    Counter("other_things", "a library's own counter", registry=other).inc()
    assert "other_things_created" in generate_latest(other).decode()


async def test_promtool_accepts_a_real_exposition(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        await h.rt.relay.register()
        await submit(h.rt, "bfl", "flux-dev", {"prompt": "a fox"})
        await h.settle()
        h.clock.advance(7)
        await sweep_once(h.rt)
        text = (await h.client.get("/metrics")).text
    assert samples(text)[("fluxhook_downloads_total", frozenset({("provider", "bfl"), ("outcome", "stored")}))] == 1
    done = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def test_promtool_checks_the_alerting_rules_and_their_unit_tests() -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=ALERTS.parent,
                            capture_output=True, text=True, timeout=60, check=False)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


async def test_the_rules_and_the_dashboard_read_only_exported_metrics(tmp_path: Path) -> None:
    async with forwarding(tmp_path) as h:
        await h.rt.relay.register()  # as `serve` does at start
        exported = {name for name, _ in await scrape(h)}
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    alerts = {rule["alert"] for rule in rules}
    assert alerts == {"FluxhookDown", "FluxhookCallbacksRefusedSpike", "FluxhookArtifactsLost", "FluxhookOutboxLag",
                      "FluxhookStoreDown", "FluxhookRescuedByPollRatio"}
    in_rules = {n for rule in rules for n in re.findall(r"fluxhook_\w+", rule["expr"])}
    dashboard = json.loads(DASHBOARD.read_text())
    in_dashboard = {n for panel in dashboard["panels"] for target in panel["targets"]
                    for n in re.findall(r"fluxhook_\w+", target["expr"])}
    assert in_rules <= exported and in_dashboard <= exported, (in_rules | in_dashboard) - exported
    assert in_rules <= in_dashboard  # the dashboard charts every figure an alert reads
    described = " ".join(panel["description"] for panel in dashboard["panels"])
    assert all(alert in described for alert in alerts)

"""Operator credentials (receiver.web.auth.operator_authorized: a bearer of FLUXHOOK_API_KEYS or
FLUXHOOK_METRICS_TOKEN) decide, in one place, who gets /metrics, /healthz's callback counters and
/readyz's problems; anyone else learns only that the process is alive and whether it is ready."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from receiver.config.keys import parse_api_keys
from tests.harness import Harness, harness, make_settings

pytestmark = pytest.mark.anyio

TOKEN = "metrics-token-0123456789"
API_KEY = "api-key-0123456789abcdef-xyz"


def with_api_key(tmp_path: Path) -> object:
    return dataclasses.replace(make_settings(tmp_path).integrations, api_keys=parse_api_keys(API_KEY))


async def health(h: Harness, authorization: str | None) -> dict[str, object]:
    answer = await h.client.get("/healthz", headers={"authorization": authorization} if authorization else {})
    assert answer.status_code == 200
    body: dict[str, object] = answer.json()
    return body


async def test_healthz_shows_the_callback_counters_to_operators_only(tmp_path: Path) -> None:
    async with harness(tmp_path, metrics_token=TOKEN, integrations=with_api_key(tmp_path)) as h:
        h.rt.metrics["rejected"] += 3
        for authorization in (None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}",
                              f"Token {API_KEY}"):
            assert await health(h, authorization) == {"ok": True}, authorization
        for authorization in (f"Bearer {TOKEN}", f"Bearer {API_KEY}", f"bearer  {API_KEY} "):
            assert await health(h, authorization) == {"ok": True, "callbacks": {"rejected": 3}}, authorization


async def test_healthz_without_any_credentials_configured_shows_no_counters(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.rt.metrics["accepted"] += 1
        assert await health(h, None) == {"ok": True}
        assert await health(h, f"Bearer {TOKEN}") == {"ok": True}


@pytest.mark.parametrize("authorization", [None, "Bearer nope-0123456789abcdef", f"Basic {TOKEN}",
                                           f"Bearer {TOKEN}", f"Bearer {API_KEY}"])
async def test_the_three_endpoints_agree_on_who_is_an_operator(tmp_path: Path, authorization: str | None) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # /readyz has a problem to tell (or not)
    headers = {"authorization": authorization} if authorization else {}
    async with harness(tmp_path, results=blocker / "results", metrics_token=TOKEN,
                       integrations=with_api_key(tmp_path)) as h:
        metrics = (await h.client.get("/metrics", headers=headers)).status_code
        counters = "callbacks" in (await h.client.get("/healthz", headers=headers)).json()
        problems = "problems" in (await h.client.get("/readyz", headers=headers)).json()
    operator = authorization in (f"Bearer {TOKEN}", f"Bearer {API_KEY}")
    assert (metrics, counters, problems) == ((200, True, True) if operator else (401, False, False))

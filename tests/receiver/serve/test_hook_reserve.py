"""The connections kept for callbacks (receiver/serve/capacity.py): how many, which paths pass, and that each
server built by `uvicorn_config` has one reserve shared by its connections."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from receiver.config.settings import Settings
from receiver.serve.capacity import HookReserve, hooks_reserved
from receiver.serve.server import refusal_log, uvicorn_config
from tests.harness import make_settings

pytestmark = pytest.mark.anyio


def test_the_reserve_follows_the_connection_cap_the_server_really_has() -> None:
    settings = Settings()
    assert hooks_reserved(settings, 512) == 51
    assert hooks_reserved(settings, 256) == 25  # lowered under the open-file limit: scaled with it
    assert hooks_reserved(settings, 2) == 1 and hooks_reserved(settings, 1) == 0  # one left for everything else
    assert hooks_reserved(settings.with_overrides(hooks_reserved=100), 512) == 100


def test_each_server_has_one_reserve_for_all_its_connections(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_connections=20)
    one, two = uvicorn_config(object(), settings), uvicorn_config(object(), settings)
    reserve = one.http.keywords["reserve"]  # type: ignore[union-attr]
    assert isinstance(reserve, HookReserve) and reserve.allowed == 18
    assert reserve is not two.http.keywords["reserve"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "root", "exempt"), [
    ("/hooks/bfl/fh_1/t", "", True), ("/healthz", "", True), ("/readyz", "", True),
    ("/v1/events", "", False), ("/ui/events", "", False), ("/hooks", "", False), ("/v1/hooks/x", "", False),
    ("/healthz/x", "", False), ("/base/hooks/bfl/fh_1/t", "/base", True), ("/base/v1/jobs", "/base", False),
])
async def test_only_callbacks_and_health_probes_pass_a_full_reserve(path: str, root: str, exempt: bool,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    reserve = HookReserve(0, refusal_log())
    sent: list[dict[str, Any]] = []
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.WARNING, "fluxhook.server"):
        await reserve.around(app)({"type": "http", "path": path, "root_path": root}, None, send)
    assert reached == ([path] if exempt else [])
    if not exempt:
        headers = dict(sent[0]["headers"])
        assert sent[0]["status"] == 503 and headers[b"retry-after"] == b"5" and headers[b"connection"] == b"close"
        assert "FLUXHOOK_HOOKS_RESERVED" in caplog.text
    assert reserve.busy == 0

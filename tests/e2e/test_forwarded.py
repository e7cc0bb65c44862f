"""Forwarded headers: X-Forwarded-For / X-Forwarded-Proto are believed only from the peers in
FLUXHOOK_FORWARDED_ALLOW_IPS (none by default), never from uvicorn's own default (loopback) nor its
FORWARDED_ALLOW_IPS environment variable. A real uvicorn server, configured by `uvicorn_config`, serves a
tiny app that echoes what it sees; behind nginx, see tests/e2e/test_tls_proxy.py."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.config.settings import Settings
from receiver.serve.background import serve_in_background

pytestmark = pytest.mark.anyio

FORGED = {"x-forwarded-for": "1.2.3.4", "x-forwarded-proto": "https"}


async def _echo(request: Request) -> JSONResponse:
    assert request.client is not None
    return JSONResponse({"client": request.client.host, "scheme": request.url.scheme})


def echo_app() -> Starlette:
    """What the app sees of its client: `request.client.host` and `request.url.scheme`."""
    return Starlette(routes=[Route("/echo", _echo)])


async def seen(settings: Settings, headers: dict[str, str]) -> dict[str, str]:
    async with serve_in_background(echo_app(), settings=settings) as url, httpx.AsyncClient() as http:
        response = await http.get(f"{url}/echo", headers=headers)
        response.raise_for_status()
        return response.json()


@pytest.mark.parametrize("allow", ["", "10.0.0.0/8", "::1,192.168.1.7"])
async def test_forged_headers_from_an_untrusted_peer_change_nothing(
    allow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvicorn's own knob, which would trust everyone, must not matter: only fluxhook's setting does.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    settings = Settings.from_env({"FLUXHOOK_FORWARDED_ALLOW_IPS": allow})
    assert await seen(settings, FORGED) == {"client": "127.0.0.1", "scheme": "http"}


async def test_the_default_trusts_no_one_not_even_loopback() -> None:
    assert Settings().forwarded_allow_ips == ()
    assert await seen(Settings(), FORGED) == {"client": "127.0.0.1", "scheme": "http"}


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/8"])
async def test_a_trusted_peer_sets_client_and_scheme(allow: str) -> None:
    settings = Settings.from_env({"FLUXHOOK_FORWARDED_ALLOW_IPS": allow})
    assert await seen(settings, FORGED) == {"client": "1.2.3.4", "scheme": "https"}
    assert await seen(settings, {}) == {"client": "127.0.0.1", "scheme": "http"}  # no headers: the peer

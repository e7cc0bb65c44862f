"""The live gallery: server-rendered pages over the ledger at `/ui` (issue 12).

Same keys as the /v1 API (FLUXHOOK_API_KEYS): `Authorization: Bearer`, or for browsers a
session cookie set by `/ui/login` (an HMAC of the key, never the key). No key configured:
every /ui page answers 404, like the API. Everything works without JavaScript; a small static
script adds new images to the gallery live from `/ui/events` (server-sent events).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

__all__ = ["ui_routes"]


def ui_routes() -> list[BaseRoute]:
    """Every /ui route: pages, login/logout, result files, the live event stream and the static files."""
    from . import views

    return views.routes()

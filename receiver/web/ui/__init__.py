"""The live gallery: server-rendered pages over the ledger at `/ui` (issue 12).

Same keys as the /v1 API (FLUXHOOK_API_KEYS): `Authorization: Bearer`, or for browsers a
session cookie set by `/ui/login` (an HMAC of the key, never the key). The job page's actions
(retry, cancel, redeliver, enable a sink) are forms posting to receiver/web/ui/actions.py, checked
against cross-site forgery by receiver/web/ui/csrf.py. No key configured:
every /ui page answers 404, like the API. Everything works without JavaScript; a small static
script adds new images to the gallery live from `/ui/events` (server-sent events).
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from receiver.web.routing import lazy

__all__ = ["ui_routes"]

STATIC = Path(__file__).parent / "static"


def ui_routes() -> list[BaseRoute]:
    """Every /ui route: pages, login/logout, result files, the live event stream and the static files.

    Each page's module (and jinja2) is imported on the first request to it (cold start)."""
    return [
        Route("/ui", lazy("receiver.web.ui.gallery:gallery"), methods=["GET"]),
        Route("/ui/login", lazy("receiver.web.ui.login:login"), methods=["GET", "POST"]),
        Route("/ui/logout", lazy("receiver.web.ui.login:logout"), methods=["POST"]),
        Route("/ui/jobs", lazy("receiver.web.ui.jobs:job_table"), methods=["GET"]),
        Route("/ui/jobs/{job_id}", lazy("receiver.web.ui.jobs:job_page"), methods=["GET"]),
        Route("/ui/jobs/{job_id}/retry", lazy("receiver.web.ui.actions:retry"), methods=["POST"]),
        Route("/ui/jobs/{job_id}/cancel", lazy("receiver.web.ui.actions:cancel"), methods=["POST"]),
        Route("/ui/jobs/{job_id}/redeliver", lazy("receiver.web.ui.actions:redeliver"), methods=["POST"]),
        Route("/ui/sinks/enable", lazy("receiver.web.ui.actions:enable_sink"), methods=["POST"]),
        Route("/ui/jobs/{job_id}/files/{n}", lazy("receiver.web.ui.jobs:result_file"), methods=["GET"]),
        Route("/ui/providers", lazy("receiver.web.ui.providers:providers_panel"), methods=["GET"]),
        Route("/ui/events", lazy("receiver.web.ui.gallery:events"), methods=["GET"]),
        Mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static"),
    ]

"""The receiver's own HTTP API beside the provider callbacks: the sweep trigger and /v1 (jobs, events, report)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from receiver.web.routing import lazy

__all__ = ["api_routes"]


def api_routes() -> list[BaseRoute]:
    """Every /v1 route of the integrations API and `/openapi.json` (not `/v1/sweep`: app.py adds it).

    Their modules (and pydantic) are imported on the first request to one of them."""
    return [
        Route("/v1/jobs", lazy("receiver.web.api.jobs:create"), methods=["POST"]),
        Route("/v1/jobs", lazy("receiver.web.api.jobs:listing"), methods=["GET"]),
        Route("/v1/jobs/{job_id}", lazy("receiver.web.api.jobs:get"), methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", lazy("receiver.web.api.jobs:cancel"), methods=["POST"]),
        Route("/v1/jobs/{job_id}/files/{n}", lazy("receiver.web.api.jobs:file"), methods=["GET"]),
        Route("/v1/jobs/{job_id}/timeline", lazy("receiver.web.api.operations:timeline"), methods=["GET"]),
        Route("/v1/jobs/{job_id}/retry", lazy("receiver.web.api.operations:retry"), methods=["POST"]),
        Route("/v1/report", lazy("receiver.web.api.operations:report"), methods=["GET"]),
        Route("/v1/events", lazy("receiver.web.api.events:events"), methods=["GET"]),
        Route("/openapi.json", lazy("receiver.web.api.openapi:openapi"), methods=["GET"]),
    ]

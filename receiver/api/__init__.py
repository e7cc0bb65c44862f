"""The receiver's own HTTP API beside the provider callbacks: the sweep trigger and /v1 (jobs, events)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from ..routing import lazy

__all__ = ["api_routes"]


def api_routes() -> list[BaseRoute]:
    """Every /v1 route of the integrations API and `/openapi.json` (not `/v1/sweep`: app.py adds it).

    Their modules (and pydantic) are imported on the first request to one of them."""
    return [
        Route("/v1/jobs", lazy("receiver.api.jobs:create"), methods=["POST"]),
        Route("/v1/jobs", lazy("receiver.api.jobs:listing"), methods=["GET"]),
        Route("/v1/jobs/{job_id}", lazy("receiver.api.jobs:get"), methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", lazy("receiver.api.jobs:cancel"), methods=["POST"]),
        Route("/v1/jobs/{job_id}/files/{n}", lazy("receiver.api.jobs:file"), methods=["GET"]),
        Route("/v1/events", lazy("receiver.api.events:events"), methods=["GET"]),
        Route("/openapi.json", lazy("receiver.api.openapi:openapi"), methods=["GET"]),
    ]

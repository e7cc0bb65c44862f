"""The receiver's own HTTP API beside the provider callbacks: the sweep trigger and /v1 (jobs, events)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

__all__ = ["api_routes"]


def api_routes() -> list[BaseRoute]:
    """Every /v1 route of the integrations API and `/openapi.json` (not `/v1/sweep`: app.py adds it)."""
    from . import events, jobs, openapi

    return [
        Route("/v1/jobs", jobs.create, methods=["POST"]),
        Route("/v1/jobs", jobs.listing, methods=["GET"]),
        Route("/v1/jobs/{job_id}", jobs.get, methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", jobs.cancel, methods=["POST"]),
        Route("/v1/jobs/{job_id}/files/{n}", jobs.file, methods=["GET"]),
        Route("/v1/events", events.events, methods=["GET"]),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
    ]

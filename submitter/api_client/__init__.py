"""A typed client for fluxhook's own `/v1` HTTP API (README.md, "The Python client"): one import line,
``from submitter.api_client import FluxhookClient``.

For hosts that have no database access: submit a job, watch it through the SSE event stream, fetch its
files, or all three in one call (`run`). One sans-IO core (:mod:`submitter.api_client.core`,
:mod:`submitter.api_client.stream`) builds every request and parses every answer; :class:`AsyncFluxhookClient`
and :class:`FluxhookClient` are thin send loops around it, so the two cannot drift apart.

Only httpx and the standard library (plus the provider side's core): importable without the receiver.
"""

from submitter.api_client.aio import AsyncFluxhookClient
from submitter.api_client.core import JobFailed
from submitter.api_client.errors import ApiError
from submitter.api_client.models import ApiEvent, JobFile, JobPage, JobView
from submitter.api_client.sse import ServerSentEvent, SSEDecoder
from submitter.api_client.sync import FluxhookClient
from submitter.backoff import RetryPolicy

__all__ = [
    "ApiError", "ApiEvent", "AsyncFluxhookClient", "FluxhookClient", "JobFailed", "JobFile", "JobPage", "JobView",
    "RetryPolicy", "SSEDecoder", "ServerSentEvent",
]

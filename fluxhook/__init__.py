"""fluxhook's Python client, under the distribution's own name: ``from fluxhook import FluxhookClient``.

The same objects as :mod:`submitter.api_client` (README.md, "The Python client"): a client for a fluxhook
server's `/v1` API, sync and async, whose `run` submits a job, waits for it and downloads its files.
Only the provider side's code and httpx: importing it never imports the receiver.
"""

from submitter.api_client import (
    ApiError,
    ApiEvent,
    AsyncFluxhookClient,
    FluxhookClient,
    JobFailed,
    JobFile,
    JobPage,
    JobView,
)
from submitter.backoff import RetryPolicy

__all__ = [
    "ApiError", "ApiEvent", "AsyncFluxhookClient", "FluxhookClient", "JobFailed", "JobFile", "JobPage", "JobView",
    "RetryPolicy",
]

"""The /v1 API client of the commands that work through FLUXHOOK_API_URL, and how they report its errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from receiver.cli.common import ApiUnavailable, CLIError
from receiver.config.settings import Settings
from submitter.api_client import ApiError, AsyncFluxhookClient

__all__ = ["answers", "client"]


def client(settings: Settings) -> AsyncFluxhookClient:
    url, key = settings.integrations.api_url, settings.integrations.api_key
    if url is None:
        raise CLIError("FLUXHOOK_API_URL is not set")
    if not key:
        raise CLIError("FLUXHOOK_API_URL is set but FLUXHOOK_API_KEY is not: the API needs one of its keys")
    return AsyncFluxhookClient(url, key)


@contextlib.contextmanager
def answers() -> Iterator[None]:
    """API errors as the CLI reports them: the server's words, exit 1 when it is down, else 2."""
    try:
        yield
    except ApiError as exc:
        if exc.status is None or exc.status >= 500:
            raise ApiUnavailable(str(exc)) from None
        raise CLIError(str(exc)) from None

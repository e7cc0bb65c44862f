"""Talking to one provider over HTTP: submit a job, check on it.

The client holds no state beyond its connection pool; the ledger is the
caller's. Retries follow :class:`~submitter.backoff.RetryPolicy` and only ever
repeat a submit that provably never reached the provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from submitter.backoff import RetryPolicy, parse_retry_after
from submitter.bodies import BodyError, Observation, SubmitAnswer, loads_object
from submitter.errors import PollFailed, ProviderUnavailable, SubmitAmbiguous, SubmitRejected
from submitter.hosts import host_allowed, normalise_host
from submitter.provider import Provider
from submitter.redaction import scrub

__all__ = ["RETRYABLE_STATUS", "Provider", "ProviderClient"]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Failures that happen before any byte of the request left: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def error_message(response: httpx.Response, hide: Iterable[str | None] = ()) -> str:
    """The provider's own words from an error body (`detail`, `error.message`, text), scrubbed
    of `hide` (what we sent: key, callback URL, webhook secret) and of anything credential-shaped
    before it is cut to length, so no fragment of a secret survives the cut."""
    return scrub(_words(response), hide)[:300] or response.reason_phrase


def _words(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, list):
            return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
        if detail:
            return str(detail)
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if data.get("message"):
            return str(data["message"])
    return response.text.strip()


class ProviderClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        provider: Provider,
        *,
        policy: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.provider = provider
        self.policy = policy
        self._sleep = sleep
        self._clock = clock

    @property
    def _headers(self) -> dict[str, str]:
        if not self.provider.api_key:
            return {}
        return self.provider.dialect.auth_headers(self.provider.api_key)

    async def submit(
        self, model: str, params: Mapping[str, Any], webhook_url: str, webhook_secret: str,
        events: Sequence[str] = (), *, budget: float | None = None,
        on_wire: Callable[[bool], Awaitable[None]] | None = None,
    ) -> SubmitAnswer:
        """Create the job at the provider.

        Raises SubmitRejected (4xx), ProviderUnavailable (retries used up, nothing
        created) or SubmitAmbiguous (sent, but no answer or an unexpected 5xx: the
        job may exist). With `budget`, retrying stops before it would run longer
        than that many seconds (the caller's lease on the job must outlast it).
        `on_wire(True)` is awaited before each request is sent and `on_wire(False)`
        after an answer that proves nothing was created, so a caller can record
        whether a crash at that moment would leave the outcome unknown.
        """
        give_up_at = None if budget is None else self._clock() + budget
        dialect = self.provider.dialect
        url = dialect.submit_url(self.provider.base_url, model)
        body = dialect.submit_body(params, webhook_url, webhook_secret, events)
        hide = (self.provider.api_key, webhook_url, webhook_secret)  # a provider may echo what it got
        last: ProviderUnavailable | None = None
        for attempt in range(self.policy.attempts):
            if attempt:
                pause = self.policy.delay(attempt - 1, last.retry_after if last else None)
                if give_up_at is not None and self._clock() + pause > give_up_at:
                    break
                await self._sleep(pause)
            if on_wire is not None:
                await on_wire(True)
            try:
                response = await self.http.post(url, json=body, headers=self._headers)
            except _NOT_SENT as exc:
                last = ProviderUnavailable(f"{self.provider.name}: cannot connect ({type(exc).__name__})")
                if on_wire is not None:
                    await on_wire(False)
                continue
            except httpx.HTTPError as exc:
                raise SubmitAmbiguous(
                    f"{self.provider.name}: no answer to the submit ({type(exc).__name__}); "
                    "the job may exist at the provider"
                ) from None
            if response.status_code in RETRYABLE_STATUS:
                retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock())
                last = ProviderUnavailable(
                    f"{self.provider.name}: HTTP {response.status_code}: {error_message(response, hide)}", retry_after
                )
                if on_wire is not None:
                    await on_wire(False)
                continue
            if response.status_code >= 500:
                # Not one of the documented "try again" answers (e.g. a gateway's 524): the
                # request reached something that may have created the job.
                raise SubmitAmbiguous(
                    f"{self.provider.name}: HTTP {response.status_code} to the submit: {error_message(response, hide)}"
                )
            if response.status_code >= 400:
                raise SubmitRejected(response.status_code, error_message(response, hide))
            try:
                return dialect.shape.submit_answer(loads_object(response.content))
            except BodyError as exc:
                # The provider said 2xx, so a job probably exists, but we cannot name it.
                raise SubmitAmbiguous(f"{self.provider.name}: unreadable submit answer: {exc}") from None
        assert last is not None
        raise last

    def status_url(self, provider_job_id: str, polling_url: str | None) -> str:
        """Where to check on a job: the provider's `polling_url` if it may have the API key,
        else the configured base URL's poll path."""
        dialect = self.provider.dialect
        if polling_url and dialect.use_polling_url and self._may_poll(polling_url):
            return polling_url
        return dialect.poll_url(self.provider.base_url, provider_job_id)

    def _may_poll(self, polling_url: str) -> bool:
        """Whether a returned `polling_url` may be sent the API key.

        It must be https, carry no credentials and name the configured API host or one of
        the dialect's `polling_hosts`. The one exception is the configured base URL's own
        origin (scheme, host and port): where the user already sends the key, e.g. a
        simulator over http. The URL is parsed by httpx, the parser that will send it.
        """
        try:
            url, base = httpx.URL(polling_url), httpx.URL(self.provider.base_url)
            host, base_host = url.raw_host.decode("ascii"), base.raw_host.decode("ascii")
        except (httpx.InvalidURL, ValueError, TypeError, UnicodeError):
            return False
        if url.userinfo or normalise_host(host) is None:
            return False
        if (url.scheme, normalise_host(host), url.port) == (base.scheme, normalise_host(base_host), base.port):
            return True
        return url.scheme == "https" and (
            normalise_host(host) == normalise_host(base_host) or host_allowed(host, self.provider.dialect.polling_hosts)
        )

    async def poll(self, provider_job_id: str, polling_url: str | None = None) -> Observation:
        """One status check. Raises PollFailed; the caller schedules the next try."""
        url = self.status_url(provider_job_id, polling_url)
        try:
            response = await self.http.get(url, headers=self._headers)
        except httpx.HTTPError as exc:
            raise PollFailed(f"{self.provider.name}: status check failed ({type(exc).__name__})") from None
        if response.status_code == 404:
            return Observation(provider_job_id, None, "404", reason="provider reports task not found", not_found=True)
        if response.status_code >= 400:
            raise PollFailed(
                f"{self.provider.name}: status check HTTP {response.status_code}: "
                f"{error_message(response, (self.provider.api_key,))}"
            )
        try:
            return self.provider.dialect.shape.observe(loads_object(response.content))
        except BodyError as exc:
            raise PollFailed(f"{self.provider.name}: unreadable status answer: {exc}") from None

    async def cancel(self, provider_job_id: str) -> Observation | None:
        """Ask the provider to cancel; None if this provider has no cancel call."""
        url = self.provider.dialect.cancel_url(self.provider.base_url, provider_job_id)
        if url is None:
            return None
        try:
            response = await self.http.post(url, headers=self._headers)
        except httpx.HTTPError as exc:
            raise PollFailed(f"{self.provider.name}: cancel failed ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise PollFailed(f"{self.provider.name}: cancel HTTP {response.status_code}: "
                             f"{error_message(response, (self.provider.api_key,))}")
        try:
            return self.provider.dialect.shape.observe(loads_object(response.content))
        except BodyError as exc:
            raise PollFailed(f"{self.provider.name}: unreadable cancel answer: {exc}") from None

"""The /v1 API client over an `httpx.AsyncClient`: a send loop around :mod:`submitter.api_client.core`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from submitter.api_client.core import (
    MAX_HOPS,
    MAX_LONG_POLL,
    RUN_TIMEOUT,
    ClientBase,
    Op,
    Paths,
    Sleep,
    run_targets,
    temp_beside,
)
from submitter.api_client.errors import bad_response
from submitter.api_client.models import ApiEvent, JobPage, JobView
from submitter.api_client.operations import Following, Timeline, file_url, report, retry, timeline
from submitter.api_client.stream import CONNECTED, Connected, SSEUnavailable, Subscription, job_of

__all__ = ["AsyncFluxhookClient"]

T = TypeVar("T")


class AsyncFluxhookClient(ClientBase):
    """The /v1 API over an `httpx.AsyncClient` it owns (close it: `async with` or :meth:`aclose`)."""

    def __init__(self, base_url: str, api_key: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Any] = asyncio.sleep, **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.AsyncClient(transport=transport, follow_redirects=False)
        self._sleep = sleep

    async def __aenter__(self) -> AsyncFluxhookClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: Op[T]) -> T:
        reply: httpx.Response | httpx.TransportError | None = None
        while True:
            try:
                step = op.throw(reply) if isinstance(reply, httpx.TransportError) else op.send(reply)
            except StopIteration as stop:
                return cast(T, stop.value)  # a generator's return value: typeshed says Any
            if isinstance(step, Sleep):
                await self._sleep(step.seconds)
                reply = None
                continue
            try:
                reply = await self._http.send(step.request)
            except httpx.TransportError as exc:
                reply = exc

    async def create(self, provider: str, model: str, params: Mapping[str, Any], *,
                     events: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
                     idempotency_key: str | None = None) -> JobView:
        """Submit a job; retried with one Idempotency-Key, so a lost answer never makes a second job."""
        return await self._run(self._core.create(self._http, provider, model, params, events, metadata,
                                                 idempotency_key))

    async def get(self, job_id: str, *, wait: float | None = None) -> JobView:
        """The job now, or with `wait` (≤ 60 s) as soon as it is terminal or the wait is over."""
        return await self._run(self._core.get(self._http, job_id, wait))

    async def list(self, status: str | None = None, provider: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> JobPage:
        return await self._run(self._core.list(self._http, status, provider, limit, cursor))

    async def iter_jobs(self, status: str | None = None, provider: str | None = None,
                        page_size: int = 50) -> AsyncGenerator[JobView, None]:
        """Every job, newest first, page after page."""
        cursor: str | None = None
        while True:
            jobs, cursor = await self.list(status, provider, page_size, cursor)
            for job in jobs:
                yield job
            if cursor is None:
                return

    async def cancel(self, job_id: str) -> JobView:
        return await self._run(self._core.cancel(self._http, job_id))

    @contextlib.asynccontextmanager
    async def _open_file(self, job_id: str, n: int) -> AsyncIterator[httpx.Response]:
        request = self._core.file_request(self._http, job_id, n)
        for _ in range(MAX_HOPS):
            response = await self._http.send(request, stream=True)
            try:
                following = self._core.redirect(self._http, response)
                if following is None:
                    if not response.is_success:
                        await response.aread()
                        raise self._core.error(response)
                    yield response
                    return
            finally:
                await response.aclose()
            request = following
        raise bad_response("too many redirects")

    async def download(self, job_id: str, n: int = 0) -> bytes:
        async with self._open_file(job_id, n) as response:
            return await response.aread()

    async def download_to(self, job_id: str, n: int, path: str | os.PathLike[str]) -> Path:
        """Stream file `n` into `path` (written beside it, then renamed: never a half file under that name)."""
        target = Path(path)
        temp = temp_beside(target)
        out = await asyncio.to_thread(temp.open, "wb")
        try:
            async with self._open_file(job_id, n) as response:
                async for chunk in response.aiter_bytes():
                    await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, temp, target)
        except BaseException:
            out.close()
            temp.unlink(missing_ok=True)
            raise
        return target

    async def _subscribe(self, sub: Subscription) -> AsyncGenerator[ApiEvent | Connected, None]:
        while True:
            failure: BaseException | None = None
            try:
                response = await self._http.send(sub.request(self._http), stream=True)
                try:
                    verdict = sub.classify(response)
                    if verdict == "error":
                        await response.aread()
                        raise self._core.error(response)
                    if verdict == "unavailable":
                        raise SSEUnavailable(response)
                    if verdict == "open":
                        yield CONNECTED
                        async for chunk in response.aiter_bytes():
                            for event in sub.feed(chunk):
                                yield event
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                failure = exc
            await self._sleep(sub.dropped(failure))

    async def events(self, *, job: str | None = None, types: Sequence[str] | None = None,
                     after: int | None = None) -> AsyncIterator[ApiEvent]:
        """Events as they happen (after `after` if given), reconnecting with Last-Event-ID when dropped.
        Use with `contextlib.aclosing` when breaking out early, so the connection closes at once."""
        async with contextlib.aclosing(self._subscribe(Subscription(self._core, job, types, after))) as items:
            async for item in items:
                if isinstance(item, ApiEvent):
                    yield item

    async def wait(self, job_id: str, timeout: float) -> JobView:  # noqa: ASYNC109 (the same call as the sync client)
        """The job once terminal, from its event stream; TimeoutError after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await self._wait(job_id)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g} s") from None

    async def _wait(self, job_id: str) -> JobView:
        view = await self.get(job_id)
        if view.terminal:
            return view
        try:
            sub = Subscription(self._core, job_id, None, None)
            async with contextlib.aclosing(self._subscribe(sub)) as items:
                async for item in items:
                    # Connected (again): whatever happened before the stream started is in the job itself.
                    view = await self.get(job_id) if item is CONNECTED else job_of(item, job_id, view)
                    if view.terminal:
                        return view
        except SSEUnavailable:
            pass
        while not view.terminal:  # no event stream here: long-poll
            view = await self.get(job_id, wait=MAX_LONG_POLL)
        return view

    # -- beyond a job's life (submitter/api_client/operations.py): what the CLI does through FLUXHOOK_API_URL --

    async def timeline(self, job_id: str) -> Timeline:
        """The job and its timeline: creation, submit, kept callbacks, outbox events (deliveries: operators only)."""
        return await self._run(timeline(self._core, self._http, job_id))

    async def retry(self, job_id: str) -> JobView:
        """Download again a job whose download failed or expired after the provider delivered."""
        return await self._run(retry(self._core, self._http, job_id))

    async def report(self, since: str | None = None) -> dict[str, Any]:
        """Reconciliation per provider (`since`: ISO 8601), as `fluxhook report --json` prints it."""
        return await self._run(report(self._core, self._http, since))

    async def file_url(self, job_id: str, n: int = 0, *, expires: int | None = None) -> str:
        """A presigned URL of file `n` (object storage), else the API's own URL of it; nothing is downloaded."""
        return await self._run(file_url(self._core, self._http, job_id, n, expires))

    async def create_once(self, provider: str, model: str, params: Mapping[str, Any], *,
                          events: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
                          idempotency_key: str | None = None) -> tuple[JobView, bool]:
        """:meth:`create`, and whether this call made the job (False: the Idempotency-Key named an earlier one)."""
        return await self._run(self._core.create_once(self._http, provider, model, params, events, metadata,
                                           idempotency_key))

    async def watch(self, job_ids: Iterable[str]) -> AsyncGenerator[JobView, None]:
        """Each job as it is, then at each change, until all are terminal: one event stream for them all (at each
        (re)connection the unfinished ones are read again, so nothing is missed); without one, long-polls."""
        following = Following(job_ids)
        try:
            async with contextlib.aclosing(self._subscribe(Subscription(self._core, None, None, None))) as items:
                async for item in items:
                    views = ([await self.get(j) for j in list(following.pending)] if isinstance(item, Connected)
                             else following.of(item))
                    for view in views:
                        if following.seen(view):
                            yield view
                    if following.done:
                        return
        except SSEUnavailable:
            pass
        for job_id in list(following.pending):  # no event stream here: long-poll each in turn
            view = await self.get(job_id)
            while True:
                if following.seen(view):
                    yield view
                if view.terminal:
                    break
                view = await self.get(job_id, wait=MAX_LONG_POLL)

    async def run(self, provider: str, model: str, params: Mapping[str, Any], *, into: str | os.PathLike[str],
                  idempotency_key: str | None = None, metadata: Mapping[str, Any] | None = None,
                  timeout: float = RUN_TIMEOUT) -> Paths:  # noqa: ASYNC109 (the same call as the sync client)
        """Create a job, wait until it ends, download its files into the folder `into` (made if missing):
        their paths, `into/<job id>-<n>.<ext>`, in file order. Errors as :meth:`FluxhookClient.run`."""
        job = await self.create(provider, model, params, metadata=metadata, idempotency_key=idempotency_key)
        targets = run_targets(await self.wait(job.id, timeout), Path(into))
        await asyncio.to_thread(Path(into).mkdir, parents=True, exist_ok=True)
        return [await self.download_to(job.id, n, path) for n, path in targets]

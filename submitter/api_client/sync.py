"""The /v1 API client over an `httpx.Client`: a send loop around :mod:`submitter.api_client.core`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
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

__all__ = ["FluxhookClient"]

T = TypeVar("T")


class FluxhookClient(ClientBase):
    """The same as :class:`AsyncFluxhookClient`, blocking, over an `httpx.Client` it owns."""

    def __init__(self, base_url: str, api_key: str, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 **options: Any) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(transport=transport, follow_redirects=False)
        self._sleep = sleep
        self._clock = clock

    def __enter__(self) -> FluxhookClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: Op[T]) -> T:
        reply: httpx.Response | httpx.TransportError | None = None
        while True:
            try:
                step = op.throw(reply) if isinstance(reply, httpx.TransportError) else op.send(reply)
            except StopIteration as stop:
                return cast(T, stop.value)  # a generator's return value: typeshed says Any
            if isinstance(step, Sleep):
                self._sleep(step.seconds)
                reply = None
                continue
            try:
                reply = self._http.send(step.request)
            except httpx.TransportError as exc:
                reply = exc

    def create(self, provider: str, model: str, params: Mapping[str, Any], *, events: Sequence[str] | None = None,
               metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> JobView:
        """Submit a job; retried with one Idempotency-Key, so a lost answer never makes a second job."""
        return self._run(self._core.create(self._http, provider, model, params, events, metadata, idempotency_key))

    def get(self, job_id: str, *, wait: float | None = None) -> JobView:
        """The job now, or with `wait` (≤ 60 s) as soon as it is terminal or the wait is over."""
        return self._run(self._core.get(self._http, job_id, wait))

    def list(self, status: str | None = None, provider: str | None = None, limit: int = 50,
             cursor: str | None = None) -> JobPage:
        return self._run(self._core.list(self._http, status, provider, limit, cursor))

    def iter_jobs(self, status: str | None = None, provider: str | None = None,
                  page_size: int = 50) -> Iterator[JobView]:
        """Every job, newest first, page after page."""
        cursor: str | None = None
        while True:
            jobs, cursor = self.list(status, provider, page_size, cursor)
            yield from jobs
            if cursor is None:
                return

    def cancel(self, job_id: str) -> JobView:
        return self._run(self._core.cancel(self._http, job_id))

    @contextlib.contextmanager
    def _open_file(self, job_id: str, n: int) -> Iterator[httpx.Response]:
        request = self._core.file_request(self._http, job_id, n)
        for _ in range(MAX_HOPS):
            response = self._http.send(request, stream=True)
            try:
                following = self._core.redirect(self._http, response)
                if following is None:
                    if not response.is_success:
                        response.read()
                        raise self._core.error(response)
                    yield response
                    return
            finally:
                response.close()
            request = following
        raise bad_response("too many redirects")

    def download(self, job_id: str, n: int = 0) -> bytes:
        with self._open_file(job_id, n) as response:
            return response.read()

    def download_to(self, job_id: str, n: int, path: str | os.PathLike[str]) -> Path:
        """Stream file `n` into `path` (written beside it, then renamed: never a half file under that name)."""
        target = Path(path)
        temp = temp_beside(target)
        try:
            with temp.open("wb") as out, self._open_file(job_id, n) as response:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return target

    def _subscribe(self, sub: Subscription,
                   deadline: float | None = None) -> Generator[ApiEvent | Connected, None, None]:
        while True:
            failure: BaseException | None = None
            try:
                response = self._http.send(sub.request(self._http, self._left(deadline)), stream=True)
                try:
                    verdict = sub.classify(response)
                    if verdict == "error":
                        response.read()
                        raise self._core.error(response)
                    if verdict == "unavailable":
                        raise SSEUnavailable(response)
                    if verdict == "open":
                        yield CONNECTED
                        for chunk in response.iter_bytes():
                            yield from sub.feed(chunk)
                            self._left(deadline)
                finally:
                    response.close()
            except httpx.TransportError as exc:
                self._left(deadline)
                failure = exc
            pause = sub.dropped(failure)
            left = self._left(deadline)
            self._sleep(pause if left is None else min(pause, left))

    def _left(self, deadline: float | None) -> float | None:
        """Seconds until `deadline` (None: no deadline); TimeoutError once it has passed."""
        if deadline is None:
            return None
        left = deadline - self._clock()
        if left <= 0:
            raise TimeoutError
        return left

    def events(self, *, job: str | None = None, types: Sequence[str] | None = None,
               after: int | None = None) -> Iterator[ApiEvent]:
        """Events as they happen (after `after` if given), reconnecting with Last-Event-ID when dropped.
        Use with `contextlib.closing` when breaking out early, so the connection closes at once."""
        with contextlib.closing(self._subscribe(Subscription(self._core, job, types, after))) as items:
            for item in items:
                if isinstance(item, ApiEvent):
                    yield item

    def wait(self, job_id: str, timeout: float) -> JobView:
        """The job once terminal, from its event stream; TimeoutError after `timeout` seconds
        (checked between reads; a read never blocks past it)."""
        deadline = self._clock() + timeout
        try:
            return self._wait(job_id, deadline)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g} s") from None

    def _wait(self, job_id: str, deadline: float) -> JobView:
        view = self.get(job_id)
        if view.terminal:
            return view
        try:
            with contextlib.closing(self._subscribe(Subscription(self._core, job_id, None, None), deadline)) as items:
                for item in items:
                    view = self.get(job_id) if item is CONNECTED else job_of(item, job_id, view)
                    if view.terminal:
                        return view
        except SSEUnavailable:
            pass
        while not view.terminal:  # no event stream here: long-poll
            left = self._left(deadline) or 0.0
            view = self.get(job_id, wait=min(left, MAX_LONG_POLL))
        return view

    # -- beyond a job's life (submitter/api_client/operations.py): the same calls as the async client --

    def timeline(self, job_id: str) -> Timeline:
        return self._run(timeline(self._core, self._http, job_id))

    def retry(self, job_id: str) -> JobView:
        return self._run(retry(self._core, self._http, job_id))

    def report(self, since: str | None = None) -> dict[str, Any]:
        return self._run(report(self._core, self._http, since))

    def file_url(self, job_id: str, n: int = 0, *, expires: int | None = None) -> str:
        return self._run(file_url(self._core, self._http, job_id, n, expires))

    def create_once(self, provider: str, model: str, params: Mapping[str, Any], *,
                    events: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
                    idempotency_key: str | None = None) -> tuple[JobView, bool]:
        return self._run(self._core.create_once(self._http, provider, model, params, events, metadata,
                                     idempotency_key))

    def watch(self, job_ids: Iterable[str]) -> Iterator[JobView]:
        following = Following(job_ids)
        try:
            with contextlib.closing(self._subscribe(Subscription(self._core, None, None, None))) as items:
                for item in items:
                    views = ([self.get(j) for j in list(following.pending)] if isinstance(item, Connected)
                             else following.of(item))
                    for view in views:
                        if following.seen(view):
                            yield view
                    if following.done:
                        return
        except SSEUnavailable:
            pass
        for job_id in list(following.pending):  # no event stream here: long-poll each in turn
            view = self.get(job_id)
            while True:
                if following.seen(view):
                    yield view
                if view.terminal:
                    break
                view = self.get(job_id, wait=MAX_LONG_POLL)

    def run(self, provider: str, model: str, params: Mapping[str, Any], *, into: str | os.PathLike[str],
            idempotency_key: str | None = None, metadata: Mapping[str, Any] | None = None,
            timeout: float = RUN_TIMEOUT) -> Paths:
        """Create a job, wait until it ends, download its files into the folder `into` (made if missing):
        their paths, `into/<job id>-<n>.<ext>`, in file order.

        JobFailed if it ends without files (`exc.job` says why); TimeoutError after `timeout` seconds
        (the job goes on: `wait` for it again, or `cancel` it); ApiError as every call. Called again with
        the same `idempotency_key` (after a crash, a timeout) it finds the same job: never a second one."""
        job = self.create(provider, model, params, metadata=metadata, idempotency_key=idempotency_key)
        targets = run_targets(self.wait(job.id, timeout), Path(into))
        Path(into).mkdir(parents=True, exist_ok=True)
        return [self.download_to(job.id, n, path) for n, path in targets]

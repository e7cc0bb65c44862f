"""Result files in an S3-compatible object store (AWS S3, R2, MinIO, ...) through obstore.

Layout: ``{prefix}/{job_id}/{n}.{ext}``. A download streams into a multipart upload at a
staging key ``{prefix}/{job_id}/.{n}.{random}.part`` (hashing on the way, at most a few parts
in memory); on commit the staged object is streamed server-to-server-through-us into the final
key with its metadata (``Content-Type`` and ``x-amz-meta-sha256``, which only the whole body
decides) and the staging object is deleted. So the final key appears only complete, with its
metadata. On failure the upload is aborted (obstore aborts the multipart upload when the body
stream raises) and the staging object deleted. After a SIGKILL, S3 keeps the parts of the
interrupted multipart upload invisible (never at any key) until an abort or a lifecycle rule
(AbortIncompleteMultipartUpload) removes them; a staging object completed but not yet copied is
removed by the next download of that job (:meth:`S3ResultStore.clean_partials`).

Credentials and region come from the standard AWS_* environment variables; FLUXHOOK_S3_ENDPOINT
names a non-AWS endpoint (path-style requests; plain http allowed only for such an endpoint).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import anyio.to_thread
import httpx

from receiver.results.contract import PROBE_BODY, Stat, StorageError, StoredFile, key_for, probe_name
from receiver.results.s3_errors import storage_error
from receiver.results.sigv4 import EMPTY_SHA256, sigv4, static_credentials
from submitter.media import extension_for

__all__ = ["S3FileWriter", "S3ResultStore"]

#: Multipart part size (S3's minimum is 5 MiB) and parts in flight: bounds memory per upload.
PART = 5 * 1024 * 1024
CONCURRENCY = 2
#: The user metadata key for the body's sha256 (`x-amz-meta-sha256` on the wire).
SHA_KEY = "sha256"


def _obstore() -> Any:
    try:
        import obstore
        import obstore.store
    except ImportError:  # pragma: no cover
        raise RuntimeError("s3:// results need obstore: pip install 'fluxhook[s3]'") from None
    return obstore


class _Stop:
    pass


_STOP = _Stop()


def _hashed(digest: Any, data: bytes | list[bytes]) -> bytes:
    """`data` as one bytes (joined off the event loop), with `digest` updated."""
    if not isinstance(data, bytes):
        data = b"".join(data)
    digest.update(data)
    return data


class S3FileWriter:
    def __init__(self, owner: S3ResultStore, job_id: str, n: int) -> None:
        self.owner, self.job_id, self.n = owner, job_id, n
        self.staging = owner.full(f"{job_id}/.{n}.{secrets.token_hex(8)}.part")
        self.media = ""
        self.key = ""
        self._queue: asyncio.Queue[bytes | _Stop | BaseException] = asyncio.Queue(maxsize=2)
        self._task: asyncio.Task[Any] | None = None
        #: Parts-in-flight bookkeeping is obstore's; this counts bytes handed over (for tests).
        self.handed = 0

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Stop):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    @property
    def name(self) -> str:
        return "result file"

    async def begin(self, media: str) -> None:
        self.media = media
        self.key = key_for(self.job_id, self.n, extension_for(media))
        ob = _obstore()
        self._task = asyncio.ensure_future(ob.put_async(
            self.owner.store, self.staging, self._body(), attributes={"Content-Type": media},
            use_multipart=True, chunk_size=PART, max_concurrency=CONCURRENCY,
        ))

    async def _hand(self, item: bytes | _Stop) -> None:
        assert self._task is not None
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
        if self._task.done() and not isinstance(item, _Stop):
            raise self.owner.failure(self._task.exception(), f"uploading {self.key}")

    async def write(self, data: bytes | list[bytes], digest: Any) -> None:
        data = await anyio.to_thread.run_sync(_hashed, digest, data)
        await self._hand(data)
        self.handed += len(data)

    async def commit(self, size: int, sha256: str) -> StoredFile:
        assert self._task is not None
        await self._hand(_STOP)
        try:
            await self._task
        except Exception as exc:
            raise self.owner.failure(exc, f"uploading {self.key}") from exc
        ob = _obstore()
        final = self.owner.full(self.key)
        try:
            if not await self.owner.copy_with_metadata(self.staging, final, self.media, sha256):
                await self._restream(final, size, sha256)
        except Exception as exc:
            raise self.owner.failure(exc, f"copying {self.key} into place") from exc
        try:
            await ob.delete_async(self.owner.store, self.staging)
        except Exception:  # noqa: S110 - left for clean_partials
            pass
        return StoredFile(path=None, size=size, sha256=sha256, content_type=self.media, key=self.key)

    async def _restream(self, final: str, size: int, sha256: str) -> None:
        """Without static credentials for a server-side copy: the staged object streams back
        through us into the final key (bounded memory, twice the traffic)."""
        ob = _obstore()
        staged = await ob.get_async(self.owner.store, self.staging)
        await ob.put_async(
            self.owner.store, final, _rechunk(staged.stream(min_chunk_size=1024 * 1024)),
            attributes={"Content-Type": self.media, SHA_KEY: sha256},
            use_multipart=size > PART, chunk_size=PART, max_concurrency=1,
        )

    async def abort(self) -> None:
        task, self._task = self._task, None
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved: the failure was reported through write/commit already
        elif task is not None:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(ConnectionAbortedError("download aborted"))
            try:
                await asyncio.wait_for(task, 30.0)
            except BaseException:  # noqa: S110 - the upload's own failure is expected here
                pass
        try:
            await _obstore().delete_async(self.owner.store, self.staging)
        except Exception:  # noqa: S110 - not there (the usual case) or left for clean_partials
            pass


async def _rechunk(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield bytes(chunk)


class S3ResultStore:
    """``s3://bucket/prefix``: objects at ``{prefix}/{job_id}/{n}.{ext}``."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 region: str | None = None) -> None:
        ob = _obstore()
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        # obstore would read AWS_ENDPOINT_URL itself; read it here so signed copies go to the same place.
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or None
        kwargs: dict[str, Any] = {"region": region}
        client: dict[str, Any] = {}
        if endpoint:
            kwargs["endpoint"] = endpoint
            kwargs["virtual_hosted_style_request"] = False
            if urlsplit(endpoint).scheme == "http":
                client["allow_http"] = True
        self.store = ob.store.S3Store(bucket, client_options=client or None, **kwargs)
        self.region, self.endpoint = region, endpoint.rstrip("/") if endpoint else None
        #: Server-side copies are signed here (SigV4) with the static AWS_* credentials; without them
        #: (instance roles, SSO...) the final object is written by streaming the staged one again.
        self.credentials = static_credentials()

    def failure(self, exc: BaseException | None, action: str) -> StorageError:
        """`exc` as a StorageError naming this bucket, what failed (`action`) and FLUXHOOK_RESULTS."""
        return storage_error(exc, action, self.bucket, self.url)

    def object_url(self, key: str) -> str:
        path = quote(key, safe="/~")
        if self.endpoint:
            return f"{self.endpoint}/{self.bucket}/{path}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{path}"

    async def copy_with_metadata(self, source: str, target: str, media: str, sha256: str) -> bool:
        """CopyObject `source` to `target` with new metadata (a single request, no bytes through us);
        False when no static credentials are configured (the caller streams instead)."""
        if self.credentials is None:
            return False
        headers = {
            "x-amz-copy-source": quote(f"/{self.bucket}/{source}", safe="/~"),
            "x-amz-metadata-directive": "REPLACE",
            "content-type": media,
            f"x-amz-meta-{SHA_KEY}": sha256,
        }
        url = self.object_url(target)
        signed = sigv4("PUT", url, headers, self.region, *self.credentials, payload=EMPTY_SHA256)
        async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(120.0, connect=10.0)) as http:
            response = await http.put(url, headers=signed)
        # CopyObject may answer 200 with an error in the body.
        if response.status_code != 200 or b"<Error>" in response.content[:512]:
            raise OSError(f"CopyObject answered {response.status_code}: {response.text[:200]!r}")
        return True

    @classmethod
    def from_url(cls, url: str, *, endpoint: str | None = None) -> S3ResultStore:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
        return cls(parts.netloc, parts.path, endpoint=endpoint)

    def full(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def writer(self, job_id: str, n: int) -> S3FileWriter:
        return S3FileWriter(self, job_id, n)

    async def clean_partials(self, job_id: str | None, older_than: float) -> int:
        ob = _obstore()
        under = self.full(f"{job_id}/") if job_id else (f"{self.prefix}/" if self.prefix else None)
        cutoff = time.time() - older_than
        doomed: list[str] = []
        try:
            async for batch in ob.list(self.store, prefix=under):
                for meta in batch:
                    name = meta["path"].rsplit("/", 1)[-1]
                    if name.startswith(".") and name.endswith(".part") and meta["last_modified"].timestamp() < cutoff:
                        doomed.append(meta["path"])
            if doomed:
                await ob.delete_async(self.store, doomed)
        except Exception as exc:
            raise self.failure(exc, f"listing {under or '/'}") from exc
        return len(doomed)

    def location(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.full(path)}"

    async def presign(self, path: str, expires: float) -> str:
        return str(await _obstore().sign_async(self.store, "GET", self.full(path), dt.timedelta(seconds=expires)))

    async def stat(self, path: str) -> Stat | None:
        ob = _obstore()
        try:
            result = await ob.get_async(self.store, self.full(path), options={"head": True})
        except FileNotFoundError:
            return None
        attrs = result.attributes
        return Stat(size=int(result.meta["size"]), sha256=attrs.get(SHA_KEY), content_type=attrs.get("Content-Type"))

    async def check(self) -> None:
        """Put a small object at the prefix and delete it."""
        ob, name = _obstore(), probe_name()
        key = self.full(name)
        try:
            await ob.put_async(self.store, key, PROBE_BODY)
        except Exception as exc:
            raise self.failure(exc, f"writing the probe object {name}") from exc
        try:
            await ob.delete_async(self.store, key)
        except Exception as exc:
            raise self.failure(exc, f"deleting the probe object {name} (written)") from exc

    async def probe(self) -> str | None:
        try:
            await self.check()
        except StorageError as exc:
            return f"results: {self.url} is not writable: {exc}"
        return None

    async def close(self) -> None:
        return None

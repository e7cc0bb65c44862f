"""Safe downloads of provider result files: the transfer.

Every hop is vetted first (receiver/fetch/policy.py: scheme, host, address) and the connection
goes to the address that was checked, TLS and Host still naming the host; only a bare GET is
sent (no client headers, cookies or credentials); redirects are followed by hand so each is
vetted again. The body is read through httpx's public streaming API, checked (size cap, type
by its first bytes), hashed on the way and written through a result store's writer
(receiver/results/), so a file appears at its final name, with the extension of its verified
type, only once it is complete and synced.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path

import httpx

from receiver.fetch.errors import DownloadError, error, transport_error
from receiver.fetch.policy import (
    CAP_SETTING,
    DownloadPolicy,
    Resolver,
    check_response,
    content_length,
    verify_type,
    vet,
)
from receiver.results.contract import FileWriter, StorageError, StoredFile
from receiver.results.local import LocalFileWriter
from submitter.media import SNIFF_BYTES
from submitter.urls import redact_url

__all__ = ["download"]

#: Bytes gathered before they are handed to the writer (its thread) at once: one hand-off per MiB.
_CHUNK = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def download(
    http: httpx.AsyncClient, url: str, dest: Path | FileWriter, policy: DownloadPolicy, *,
    resolver: Resolver | None = None, on_chunk: Callable[[int], Awaitable[None]] | None = None,
) -> StoredFile:
    """Fetch `url` into `dest` + "." + extension (from the content type), or into a result store's
    writer (see receiver/results/contract.py): the body streams through, hashed on the way, never
    held whole. `on_chunk(bytes so far)` is awaited after every piece of the body that arrives.

    Redirects are followed by hand so every hop is vetted. Raises DownloadError.
    """
    target = _parse(url)
    for _ in range(policy.max_redirects + 1):
        request = _pinned_request(target, await vet(target, policy, resolver), http)
        try:
            response = await http.send(request, stream=True, auth=None, follow_redirects=False)
        except httpx.TransportError as exc:
            raise transport_error(exc, target) from exc
        try:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise error("rejected", "redirect without Location", target)
                target = _parse(location, base=target)
                continue
            content_type = check_response(response, target, policy)
            return await _store(response, target, _writer_for(dest), content_type, policy, on_chunk)
        finally:
            await response.aclose()
    raise error("rejected", f"more than {policy.max_redirects} redirects", target)


def _writer_for(dest: Path | FileWriter) -> FileWriter:
    return LocalFileWriter(Path(dest)) if isinstance(dest, (str, os.PathLike)) else dest


def _parse(url: str, base: httpx.URL | None = None) -> httpx.URL:
    try:
        return base.join(url) if base is not None else httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise DownloadError("rejected", f"invalid URL: {redact_url(url)}") from None


def _pinned_request(url: httpx.URL, address: str | None, http: httpx.AsyncClient) -> httpx.Request:
    """A bare GET (none of the client's default headers, cookies or auth), sent to the vetted
    address while TLS (httpx's documented `sni_hostname` extension) and the Host header still
    name the original host."""
    extensions: dict[str, object] = {"timeout": http.timeout.as_dict()}
    if address is None:
        return httpx.Request("GET", url, extensions=extensions)
    host = url.raw_host.decode("ascii")  # IDNA-encoded, as it goes on the wire
    extensions["sni_hostname"] = host
    authority = host if url.port is None else f"{host}:{url.port}"
    return httpx.Request("GET", url.copy_with(host=address), headers={"host": authority}, extensions=extensions)


async def _store(
    response: httpx.Response, url: httpx.URL, writer: FileWriter, media: str, policy: DownloadPolicy,
    on_chunk: Callable[[int], Awaitable[None]] | None,
) -> StoredFile:
    expected, size, digest, done = content_length(response), 0, hashlib.sha256(), False
    name = "result file"
    try:
        await writer.begin(media)
        name = writer.name
        pending: list[bytes] = []
        buffered = 0
        verified = False
        try:
            async for chunk in _body(response):
                size += len(chunk)
                if size > policy.max_bytes:
                    raise error("rejected", f"body exceeds {CAP_SETTING} ({policy.max_bytes} bytes)", url)
                pending.append(chunk)
                buffered += len(chunk)
                if not verified and size >= SNIFF_BYTES:  # before anything is written (SNIFF_BYTES < _CHUNK)
                    verify_type(b"".join(pending)[:SNIFF_BYTES], media, url)
                    verified = True
                if buffered >= _CHUNK:
                    parts, pending, buffered = pending, [], 0
                    await writer.write(parts, digest)  # joined, hashed and written off the event loop
                    del parts
                if on_chunk is not None:
                    # After every chunk, however small: a slow server must not let the caller's
                    # lease lapse. The callback decides by time whether to act.
                    await on_chunk(size)
        except httpx.RemoteProtocolError as exc:
            if expected is not None and size < expected:  # the peer closed before Content-Length bytes came
                raise error("transient", f"body truncated at {size} of {expected} bytes", url) from exc
            raise transport_error(exc, url) from exc
        except httpx.TransportError as exc:
            raise transport_error(exc, url) from exc
        if expected is not None and size != expected:
            raise error("transient", f"body truncated at {size} of {expected} bytes", url)
        if size == 0:
            raise error("rejected", "empty body", url)
        if not verified:  # a body shorter than SNIFF_BYTES: all of it is in `pending`
            verify_type(b"".join(pending), media, url)
        if pending:
            await writer.write(pending, digest)
        stored = await writer.commit(size, digest.hexdigest())
        done = True
    except StorageError as exc:  # says where and which setting; the result URL is beside the point
        raise DownloadError("transient", str(exc), storage=exc.kind) from exc
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise error("transient", f"cannot write {name} ({reason})", url) from exc
    finally:
        if not done:
            with suppress(OSError):
                await writer.abort()
    return stored


def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive (aiter_bytes, not aiter_raw: a response built with its
    content already read, as a mock transport's is, has no raw stream left). Nothing is decoded:
    encodings other than identity were refused with the headers."""
    return response.aiter_bytes()

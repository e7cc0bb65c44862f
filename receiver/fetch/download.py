"""Safe downloads of provider result files.

Result URLs arrive in callbacks and poll responses, are signed and short-lived
(BFL: about ten minutes), and are treated as untrusted input. Every hop is
checked against allowed schemes (https only, unless FLUXHOOK_DOWNLOAD_ALLOW_HTTP)
and hosts and against private addresses; only a bare GET is sent (no client
headers, cookies or credentials); the body must be a raster image (PNG, JPEG,
WebP, GIF or AVIF: its first bytes and its Content-Type must agree; never SVG,
which carries scripts) no larger than a cap; and a file appears at its final
path, with the extension of its verified type, only once it is complete and
synced to disk.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import os
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import httpx

from submitter.hosts import host_allowed
from submitter.urls import url_expiry

if TYPE_CHECKING:
    from receiver.config.settings import Settings
    from receiver.results import Sink

__all__ = [
    "IMAGE_TYPES", "DownloadError", "DownloadPolicy", "Resolver", "StoredFile", "check_address", "clean_partials",
    "download", "extension_for", "host_allowed", "media_type", "redact_url", "sniff_image", "url_expiry",
]

Resolver = Callable[[str], Awaitable[list[str]]]
Kind = Literal["expired", "transient", "rejected"]

_CHUNK = 1024 * 1024  # bytes handed to the writer thread at a time
#: Bytes asked of a result's connection per read (httpcore asks 64 KiB). Each read costs the same
#: fixed work (a timeout scope, a parser event, a task switch) whatever its size: at 64 KiB that
#: fixed work, not the bytes, was most of a download's CPU.
_READ = 256 * 1024
#: Bytes a result's connection may hold received but not yet consumed. uvloop (libuv) reads a
#: readable socket up to 32 times per wake-up until the protocol pauses it, so without this bound
#: each connection pulled its socket's whole receive window (up to tcp_rmem's maximum) into memory.
_AHEAD = 256 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_EXPIRED = frozenset({401, 403, 404, 410})
_RETRYABLE = frozenset({408, 425, 429})
_METADATA = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254")))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: The image types downloaded (and served), with their file extensions: raster formats only.
IMAGE_TYPES: Mapping[str, str] = {
    "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/avif": "avif",
}
_ALIASES = {"image/jpg": "image/jpeg"}
#: Bytes read before the body's type is checked (enough for an AVIF `ftyp` box with its brands).
_SNIFF = 256


@dataclass(frozen=True)
class DownloadPolicy:
    """What `download` may fetch. Host patterns: `*` (any), `*.example.com`
    (subdomains only, not example.com itself) or an exact name or IP literal."""

    allowed_hosts: tuple[str, ...]
    allow_private: bool = False
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 5
    schemes: tuple[str, ...] = ("https",)

    @classmethod
    def from_settings(cls, settings: Settings, provider: str) -> DownloadPolicy:
        """The policy for `provider`'s result files: its download hosts (or FLUXHOOK_DOWNLOAD_HOSTS),
        the size cap, and plain http and private addresses only where the settings allow them."""
        return cls(
            allowed_hosts=settings.download_hosts_for(provider),
            allow_private=settings.download_allow_private,
            max_bytes=settings.max_download_bytes,
            schemes=("https", "http") if settings.download_allow_http else ("https",),
        )


@dataclass(frozen=True)
class StoredFile:
    """A result file stored: `path` on disk (None in an object store), `key` as the ledger records it."""

    path: Path | None
    size: int
    sha256: str
    content_type: str
    #: Relative to the result store's root: `{job_id}/{n}.{ext}`.
    key: str = ""


class DownloadError(Exception):
    """A result file could not be stored; `kind` says what the caller should do:

    - ``expired``: the URL no longer works; get a fresh one from the provider.
    - ``transient``: network, server or disk trouble; retry later.
    - ``rejected``: the URL or the response is unacceptable; do not retry.
    """

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind


def redact_url(url: str | httpx.URL) -> str:
    """`scheme://host[:port]/…/name`: no userinfo, query (signature) or fragment, and only the
    last path segment (some hosts, e.g. replicate.delivery, grant access by the path itself)."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme:
        return "<invalid URL>"
    host = f"[{host}]" if ":" in host else host
    name = parts.path.rsplit("/", 1)[-1]
    path = f"/…/{name}" if parts.path.count("/") > 1 else parts.path
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{path}"


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.is_site_local or (embedded is not None and _forbidden(embedded)):
            return True
    # `is_global` alone misses multicast (e.g. 239/8); the rest are spelled out for the reader.
    flags = (ip.is_private, ip.is_loopback, ip.is_link_local, ip.is_multicast, ip.is_reserved, ip.is_unspecified)
    return ip in _METADATA or not ip.is_global or any(flags)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve(host: str) -> list[str]:
    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_address(host: str, policy: DownloadPolicy, resolver: Resolver | None = None) -> str | None:
    """Reject `host` if it is, or resolves to, any non-public address.

    Returns the vetted address to connect to when `host` is a name (None for IP
    literals and when private addresses are allowed), so the connection goes to
    the address that was checked and a second DNS answer cannot redirect it.
    """
    if policy.allow_private:
        return None
    host = host.strip("[]")
    try:
        found = [host] if _is_ip(host) else await (resolver or _resolve)(host)
    except OSError as exc:
        raise DownloadError("transient", f"cannot resolve {host!r}: {exc}") from exc
    if not found:
        raise DownloadError("transient", f"{host!r} resolved to no addresses")
    for address in found:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise DownloadError("rejected", f"{host!r} resolved to invalid address {address!r}") from None
        if _forbidden(ip):
            raise DownloadError("rejected", f"{host!r} resolves to non-public address {address}")
    return None if _is_ip(host) else found[0]


def media_type(content_type: str) -> str:
    """The media type of a Content-Type value: lowercase, no parameters, aliases resolved."""
    media = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(media, media)


def extension_for(content_type: str) -> str:
    """File extension for one of the accepted image types; ValueError for any other type."""
    try:
        return IMAGE_TYPES[media_type(content_type)]
    except KeyError:
        raise ValueError(f"not an accepted image type: {content_type!r}") from None


def sniff_image(head: bytes) -> str | None:
    """The image type the first bytes of a file show (one of IMAGE_TYPES), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 16 and head[4:8] == b"ftyp":
        # ISO BMFF: a `ftyp` box first; AVIF names `avif` (image) or `avis` (sequence) as its
        # major or a compatible brand. HEIC and MP4 share the box but not the brands.
        box = int.from_bytes(head[:4], "big")
        if 16 <= box <= len(head) and box % 4 == 0:
            brands = {head[8:12], *(head[i:i + 4] for i in range(16, box, 4))}
            if brands & {b"avif", b"avis"}:
                return "image/avif"
    return None


async def download(
    http: httpx.AsyncClient, url: str, dest: Path | Sink, policy: DownloadPolicy, *, resolver: Resolver | None = None,
    on_chunk: Callable[[int], Awaitable[None]] | None = None,
) -> StoredFile:
    """Fetch `url` into `dest` + "." + extension (from the content type), or into a result store's
    sink (see receiver.results): the body streams through, hashed on the way, never held whole.

    Redirects are followed by hand so every hop is vetted. Raises DownloadError.
    """
    target = _parse(url)
    for _ in range(policy.max_redirects + 1):
        request = _pinned_request(target, await _vet(target, policy, resolver), http)
        try:
            response = await http.send(request, stream=True, auth=None, follow_redirects=False)
        except httpx.TransportError as exc:
            raise _transport_error(exc, target) from exc
        try:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise _error("rejected", "redirect without Location", target)
                target = _parse(location, base=target)
                continue
            content_type = _check_response(response, target, policy)
            _tune(response)
            return await _store(response, target, _sink(dest), content_type, policy, on_chunk)
        finally:
            await response.aclose()
    raise _error("rejected", f"more than {policy.max_redirects} redirects", target)


def _tune(response: httpx.Response) -> None:
    """Larger reads and a bounded read-ahead for this response's connection (see _READ, _AHEAD),
    where it is httpx's own HTTP/1.1 transport over anyio; any other transport (a mock, HTTP/2, a
    library version laid out differently) is left as it is. Neither changes what is read or checked."""
    stream = getattr(getattr(getattr(response.stream, "_stream", None), "_httpcore_stream", None), "_stream", None)
    connection = getattr(stream, "_connection", None)
    if isinstance(getattr(connection, "READ_NUM_BYTES", None), int):
        connection.READ_NUM_BYTES = max(connection.READ_NUM_BYTES, _READ)
    network = getattr(response.extensions.get("network_stream"), "_stream", None)
    network = getattr(network, "transport_stream", network)  # under TLS, the socket stream beneath
    transport, protocol = getattr(network, "_transport", None), getattr(network, "_protocol", None)
    # uvloop's transports are not asyncio.Transport subclasses: checked by what is used.
    if (all(hasattr(transport, name) for name in ("get_protocol", "set_protocol", "pause_reading"))
            and transport.get_protocol() is protocol and isinstance(getattr(protocol, "read_queue", None), deque)):
        transport.set_protocol(_ReadAhead(protocol, transport))  # the stream still reads `protocol`'s queue


class _ReadAhead(asyncio.Protocol):
    """Passes everything to anyio's stream protocol `inner`; pauses the transport once `inner`
    holds _AHEAD bytes unread. The stream resumes reading when its queue runs dry, as it does anyway."""

    def __init__(self, inner: Any, transport: Any) -> None:
        self.inner, self.transport = inner, transport

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)
        queue = self.inner.read_queue
        if len(queue) > 1 and sum(map(len, queue)) >= _AHEAD:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _sink(dest: Path | Sink) -> Sink:
    if isinstance(dest, (str, os.PathLike)):
        from receiver.results.local import FileSink

        return FileSink(Path(dest))
    return dest


def _error(kind: Kind, problem: str, url: httpx.URL | str) -> DownloadError:
    return DownloadError(kind, f"{problem}: {redact_url(url)}")


def _transport_error(exc: httpx.TransportError, url: httpx.URL) -> DownloadError:
    detail = str(exc)
    if url.query:  # never echo the signature, whatever the exception says
        detail = detail.replace(url.query.decode("ascii", "replace"), "<redacted>")
    return _error("transient", f"{type(exc).__name__}{f' ({detail})' if detail else ''}", url)


def _parse(url: str, base: httpx.URL | None = None) -> httpx.URL:
    try:
        return base.join(url) if base is not None else httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise DownloadError("rejected", f"invalid URL: {redact_url(url)}") from None


async def _vet(url: httpx.URL, policy: DownloadPolicy, resolver: Resolver | None) -> str | None:
    if url.scheme not in policy.schemes:
        hint = " (plain http needs FLUXHOOK_DOWNLOAD_ALLOW_HTTP=1)" if url.scheme == "http" else ""
        raise _error("rejected", f"scheme {url.scheme!r} not allowed{hint}", url)
    if url.userinfo:
        raise _error("rejected", "credentials in URL", url)
    host = url.raw_host.decode("ascii", "replace")
    if not host_allowed(host, policy.allowed_hosts):
        allowed = ", ".join(policy.allowed_hosts) or "none"
        raise _error("rejected", f"host {host!r} not allowed (allowed: {allowed}; set FLUXHOOK_DOWNLOAD_HOSTS to "
                                 "change the list)", url)
    return await check_address(host, policy, resolver)


def _pinned_request(url: httpx.URL, address: str | None, http: httpx.AsyncClient) -> httpx.Request:
    """A bare GET (none of the client's default headers, cookies or auth), sent to the vetted
    address while TLS and the Host header still name the original host."""
    extensions: dict[str, object] = {"timeout": http.timeout.as_dict()}
    if address is None:
        return httpx.Request("GET", url, extensions=extensions)
    host = url.raw_host.decode("ascii")  # IDNA-encoded, as it goes on the wire
    extensions["sni_hostname"] = host
    authority = host if url.port is None else f"{host}:{url.port}"
    return httpx.Request("GET", url.copy_with(host=address), headers={"host": authority}, extensions=extensions)


def _check_response(response: httpx.Response, url: httpx.URL, policy: DownloadPolicy) -> str:
    """Vet status and headers before any of the body is read; return the media type."""
    status = response.status_code
    if status != 200:
        if status in _EXPIRED:
            raise _error("expired", f"HTTP {status} (URL expired or revoked)", url)
        kind: Kind = "transient" if status in _RETRYABLE or status >= 500 else "rejected"
        raise _error(kind, f"HTTP {status}", url)
    media = media_type(response.headers.get("content-type", ""))
    if media not in IMAGE_TYPES:
        raise _error("rejected", f"content type {media or 'missing'!r} is not a PNG, JPEG, WebP, GIF or AVIF image",
                     url)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _error("rejected", f"unexpected content encoding {encoding!r}", url)
    length = _content_length(response)
    if length is not None and length > policy.max_bytes:
        raise _error("rejected", f"body of {length} bytes exceeds {policy.max_bytes}", url)
    return media


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


async def _store(
    response: httpx.Response, url: httpx.URL, sink: Sink, media: str, policy: DownloadPolicy,
    on_chunk: Callable[[int], Awaitable[None]] | None,
) -> StoredFile:
    expected, size, digest, done = _content_length(response), 0, hashlib.sha256(), False
    name = "result file"
    try:
        await sink.begin(media)
        name = getattr(getattr(sink, "final", None), "name", name)
        pending: list[bytes] = []
        buffered = 0
        verified = False
        try:
            async for chunk in _body(response, expected):
                size += len(chunk)
                if size > policy.max_bytes:
                    raise _error("rejected", f"body exceeds {policy.max_bytes} bytes", url)
                pending.append(chunk)
                buffered += len(chunk)
                if not verified and size >= _SNIFF:  # before anything is written (_SNIFF < _CHUNK)
                    _verify_type(b"".join(pending)[:_SNIFF], media, url)
                    verified = True
                if buffered >= _CHUNK:
                    parts, pending, buffered = pending, [], 0
                    await sink.write(parts, digest)  # joined, hashed and written off the event loop
                    del parts
                if on_chunk is not None:
                    # After every chunk, however small: a slow server must not let the caller's
                    # lease lapse. The callback decides by time whether to act.
                    await on_chunk(size)
        except httpx.TransportError as exc:
            raise _transport_error(exc, url) from exc
        if expected is not None and size != expected:
            raise _error("transient", f"body truncated at {size} of {expected} bytes", url)
        if size == 0:
            raise _error("rejected", "empty body", url)
        if not verified:  # a body shorter than _SNIFF: all of it is in `pending`
            _verify_type(b"".join(pending), media, url)
        if pending:
            await sink.write(pending, digest)
        stored = await sink.commit(size, digest.hexdigest())
        done = True
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise _error("transient", f"cannot write {name} ({reason})", url) from exc
    finally:
        if not done:
            with suppress(OSError):
                await sink.abort()
    return stored


def _verify_type(head: bytes, media: str, url: httpx.URL) -> None:
    """The body's first bytes must show the type its Content-Type claims. On a mismatch the
    file is refused, not stored under the type its bytes show: the sender's two accounts of
    the file disagree, and nothing is kept that neither the header nor the bytes vouch for."""
    found = sniff_image(head)
    if found is None:
        raise _error("rejected", f"body is not a PNG, JPEG, WebP, GIF or AVIF image (Content-Type {media})", url)
    if found != media:
        raise _error("rejected", f"body is {found} but Content-Type says {media}", url)


def _absorb(fp: Any, digest: Any, data: bytes) -> None:
    digest.update(data)
    fp.write(data)


def _body(response: httpx.Response, expected: int | None) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive. A Content-Length body on httpx's own HTTP/1.1 connection
    is read straight from the connection (see _direct); anything else through httpx."""
    direct = _direct(response, expected)
    return direct if direct is not None else response.aiter_bytes()  # no decoding: encodings are refused


def _direct(response: httpx.Response, expected: int | None) -> AsyncIterator[bytes] | None:
    """Reads of up to _READ bytes from the response's network stream (httpcore's `network_stream`
    extension), once h11 has parsed the headers: the bytes it holds past them first, then exactly
    the `expected` (Content-Length) bytes that remain. This skips the per-read parser event and
    the four layers of stream wrappers, and three copies of every byte (into h11's buffer, out of
    it, into bytes); the body's framing is the Content-Length alone, so nothing is parsed there.

    None (read through httpx) unless: HTTP/1.x with a Content-Length and no Transfer-Encoding,
    h11 waiting for exactly that body. The connection is closed afterwards, never reused: httpcore
    closes a connection whose response it did not see end (see `_response_closed`).
    """
    if expected is None or "transfer-encoding" in response.headers or response.http_version not in (
            "HTTP/1.1", "HTTP/1.0"):
        return None
    network = response.extensions.get("network_stream")
    stream = getattr(getattr(getattr(response.stream, "_stream", None), "_httpcore_stream", None), "_stream", None)
    state = getattr(getattr(stream, "_connection", None), "_h11_state", None)
    import h11  # loaded with the first download, not at start-up
    import httpcore

    if (not isinstance(network, httpcore.AsyncNetworkStream) or not isinstance(state, h11.Connection)
            or state.their_state is not h11.SEND_BODY):
        return None
    held, _closed = state.trailing_data
    timeout = response.request.extensions.get("timeout", {}).get("read")
    socket_stream = getattr(network, "_stream", None)  # the anyio stream httpcore reads through
    if isinstance(socket_stream, anyio.abc.ByteReceiveStream) and _on_asyncio():
        read = _anyio_reader(socket_stream, timeout)
    else:
        read = _httpcore_reader(network, timeout, httpcore)
    return _exactly(held[:expected], expected, read)


def _on_asyncio() -> bool:
    import sniffio  # a dependency of anyio and httpx

    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


Read = Callable[[int], Awaitable[bytes]]


def _anyio_reader(stream: anyio.abc.ByteReceiveStream, read_timeout: float | None) -> Read:
    """Reads from the anyio stream beneath httpcore's, each bounded by an asyncio timer rather than an
    anyio cancel scope (which, with its backend lookup, was the largest part of the per-read cost
    left); b"" when the connection closed; errors as httpx raises them."""

    async def read(size: int) -> bytes:
        try:
            async with asyncio.timeout(read_timeout):
                return await stream.receive(size)
        except TimeoutError as exc:  # this read's own deadline: an outer one surfaces as CancelledError here
            raise httpx.ReadTimeout(f"no data for {read_timeout} s") from exc
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:  # OSError: anyio 3's
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    return read


def _httpcore_reader(network: Any, read_timeout: float | None, httpcore: Any) -> Read:
    """Reads through httpcore's network stream (any other backend); b"" when the connection closed."""

    async def read(size: int) -> bytes:
        try:
            return await network.read(size, timeout=read_timeout)  # type: ignore[no-any-return]
        except httpcore.TimeoutException as exc:  # as httpx would raise them
            raise httpx.ReadTimeout(str(exc)) from exc
        except httpcore.NetworkError as exc:
            raise httpx.ReadError(str(exc)) from exc

    return read


async def _exactly(held: bytes, expected: int, read: Read) -> AsyncIterator[bytes]:
    """`held`, then reads of up to _READ bytes until `expected` bytes in all, or until the connection
    closes early (the caller reports the truncation)."""
    remaining = expected
    if held:
        remaining -= len(held)
        yield held
    while remaining > 0:
        data = await read(min(_READ, remaining))  # never more than remains: `remaining` stays >= 0
        if not data:
            return
        remaining -= len(data)
        yield data


def clean_partials(results_dir: Path, older_than: float) -> int:
    """Delete leftover `.<name>.<random>.part` files under `results_dir` last modified more
    than `older_than` seconds ago; return the count.

    Other processes may be downloading into the same folder (an overlapping `fluxhook
    sweep`, another replica): pass an age no running download can reach, such as the
    download timeout plus a margin, so only the temp files of dead downloads go.
    """
    cutoff = time.time() - older_than
    removed = 0
    for root, _dirs, files in os.walk(results_dir):
        for name in files:
            if name.startswith(".") and name.endswith(".part"):
                path = os.path.join(root, name)
                with suppress(FileNotFoundError):
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
    return removed

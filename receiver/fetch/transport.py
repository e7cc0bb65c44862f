"""The transport under the download client: one GET per connection, HTTP/1.1, with bounded read-ahead.

An :class:`httpx.AsyncBaseTransport` (httpx's documented transport interface) on asyncio's public
protocol API and h11 (the sans-IO HTTP/1.1 parser httpx's own stack uses). It exists for two
reasons httpx's default transport cannot meet on result downloads (bench/downloads.py): its anyio
backend drains every socket into memory whatever the reader's pace (no flow control, so 32
concurrent downloads held hundreds of MiB), and it reads 64 KiB at a time with a fixed cost per
read. Here each connection holds at most `buffer` bytes (plus one read of the socket) before the
socket is paused (`transport.pause_reading()`), and each read takes everything buffered.

What receiver/fetch/download.py relies on is kept: the request extensions `timeout` (connect, read
per read, write) and `sni_hostname` (connect to a vetted address, TLS still naming the host), TLS
verified with httpx's own default context (`httpx.create_ssl_context`), httpx's exception types,
and a body cut short (Content-Length or chunked) raised as `httpx.RemoteProtocolError`, never a
short success. No pooling and no proxies: the connection is closed when the response is, on every
path (aclose, an error, cancellation). asyncio only (the receiver runs on asyncio or uvloop).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import httpx

if TYPE_CHECKING:
    import h11

__all__ = ["BUFFER", "FetchTransport"]

#: Bytes a connection may hold, received and not yet read by the download, before its socket is paused.
BUFFER = 256 * 1024
_PORTS = {"http": 80, "https": 443}


class _Socket(asyncio.Protocol):
    """One connection's bytes as they arrive: reading pauses once `limit` are held, resumes once read."""

    def __init__(self, limit: int, live: set[_Socket]) -> None:
        self.limit = limit
        self._live = live  # the transport's open connections: this one until it is lost
        self.transport: asyncio.Transport | None = None
        #: Bytes received and not yet read (at most `limit` plus one read of the socket).
        self.buffered = 0
        #: Reading from the socket is paused because `limit` bytes are held.
        self.paused = False
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._lost: BaseException | None = None
        self._arrived: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._live.add(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= self.limit and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof, self._lost = True, self._lost or exc
        self._live.discard(self)
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _wake(self) -> None:
        arrived, self._arrived = self._arrived, None
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    async def read(self) -> bytes:
        """Everything received so far (waiting for something); b"" at the end. Raises OSError."""
        while not self._chunks:
            if self._eof:
                if self._lost is not None:
                    raise self._lost
                return b""
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        assert self.transport is not None
        if self._eof:
            raise ConnectionResetError("connection closed by the server")
        self.transport.write(data)
        while self._writable is not None:
            await asyncio.shield(self._writable)

    def close(self, *, clean: bool) -> None:
        """Close the socket: politely after a complete response (asyncio bounds a TLS close_notify
        exchange by itself), at once otherwise. Never waits, so it holds under cancellation."""
        if not clean:  # whoever reads next learns the connection is gone
            self._eof, self._lost = True, self._lost or ConnectionAbortedError("connection closed by the client")
            self._chunks.clear()
            self.buffered = 0
            self._wake()
        if self.transport is not None and not self.transport.is_closing():
            if clean:
                self.transport.close()
            else:
                self.transport.abort()


class _Body(httpx.AsyncByteStream):
    """A response's body read off its connection; closing it closes the connection."""

    def __init__(self, parser: h11.Connection, sock: _Socket, request: httpx.Request) -> None:
        self._parser, self._sock, self._request = parser, sock, request
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import h11  # deferred for cold start (see handle_async_request)

        try:
            while True:
                event = await _next_event(self._parser, self._sock, self._request)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._complete = True
                    return
                else:
                    raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in the body",
                                                    request=self._request)
        except BaseException:
            self._sock.close(clean=False)
            raise

    async def aclose(self) -> None:
        self._sock.close(clean=self._complete)


class FetchTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 GETs, one per connection, each holding at most `buffer` unread bytes.

    `verify`: the TLS context (default: httpx's own, `httpx.create_ssl_context`, built at the first
    https request: loading the CA bundle takes longer than the rest of start-up)."""

    def __init__(self, *, verify: ssl.SSLContext | None = None, buffer: int = BUFFER) -> None:
        self._tls = verify
        self._buffer = buffer
        self._live: set[_Socket] = set()

    @property
    def connections(self) -> int:
        """Connections open now (each is closed with its response)."""
        return len(self._live)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read, over the open connections: at most `buffer` plus one
        read of the socket each."""
        return sum(sock.buffered for sock in self._live)

    @property
    def paused(self) -> int:
        """Open connections whose socket is paused until their response is read further."""
        return sum(sock.paused for sock in self._live)

    async def aclose(self) -> None:
        """Close every connection still open (a response not closed yet fails its next read)."""
        for sock in list(self._live):
            sock.close(clean=False)

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context(trust_env=False)
        return self._tls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        tls = self._context() if url.scheme == "https" else None
        host = url.raw_host.decode("ascii")  # IDNA-encoded, as on the wire
        sni = request.extensions.get("sni_hostname") or host
        body = await request.aread()  # a GET has none; anything else is small
        # h11 is imported with the first request, not with the app: serving callbacks needs no client.
        import h11

        sock = _Socket(self._buffer, self._live)
        try:
            try:
                async with asyncio.timeout(timeouts.get("connect")):
                    await asyncio.get_running_loop().create_connection(
                        lambda: sock, host, url.port or _PORTS[url.scheme],
                        ssl=tls, server_hostname=sni if tls is not None else None)
            except TimeoutError as exc:
                raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
            except OSError as exc:  # refused, unreachable, TLS refused (ssl.SSLError is an OSError)
                raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
            parser = h11.Connection(h11.CLIENT)
            await _send(parser, sock, request, body)
            while True:
                event = await _next_event(parser, sock, request)
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):
                    raise httpx.RemoteProtocolError("server disconnected without sending a response",
                                                    request=request)
        except BaseException:
            sock.close(clean=False)
            raise
        return httpx.Response(
            event.status_code, headers=list(event.headers), stream=_Body(parser, sock, request),
            extensions={"http_version": b"HTTP/" + event.http_version, "reason_phrase": event.reason},
        )


async def _send(parser: h11.Connection, sock: _Socket, request: httpx.Request, body: bytes) -> None:
    import h11  # deferred for cold start (see FetchTransport.handle_async_request)

    headers = list(request.headers.raw)
    if "connection" not in request.headers:
        headers.append((b"connection", b"close"))  # one request per connection
    try:
        data = parser.send(h11.Request(method=request.method, target=request.url.raw_path, headers=headers))
        if body:
            data = (data or b"") + (parser.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (parser.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    try:
        async with asyncio.timeout(request.extensions.get("timeout", {}).get("write")):
            await sock.write(data)
    except TimeoutError as exc:
        raise httpx.WriteTimeout("timed out sending the request", request=request) from exc
    except OSError as exc:
        raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc


async def _next_event(parser: h11.Connection, sock: _Socket, request: httpx.Request) -> Any:
    """h11's next event, reading the socket as it needs (each read bounded by the read timeout)."""
    import h11  # deferred for cold start (see FetchTransport.handle_async_request)

    timeout: float | None = request.extensions.get("timeout", {}).get("read")
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:  # malformed, or the body cut short by the peer's close
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        if event is not h11.NEED_DATA:
            return event
        try:
            async with asyncio.timeout(timeout):
                data = await sock.read()
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out reading the response", request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        parser.receive_data(data)

"""The download client's transport (receiver/fetch/transport.py) on real loopback connections:
SNI and Host when connecting by address, certificate checks, bounded read-ahead, the socket closed
on cancellation and aclose, httpx's exception types. No sleeps decide an outcome: waits are for a
state (with a generous bound that only fails a broken run)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib.util
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from receiver.config.settings import Settings
from receiver.engine.runtime import Runtime
from receiver.fetch import download as fetch_download
from receiver.fetch.download import download
from receiver.fetch.errors import DownloadError
from receiver.fetch.policy import DownloadPolicy
from receiver.fetch.transport import BUFFER, FetchTransport

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n"
MIB = 1 << 20
#: The most one read of a socket hands over (asyncio's and uvloop's read size).
ONE_READ = 256 * 1024
LOOPS = [pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    LOOPS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Peer:
    """A loopback server running `handler` per connection; `closed` is set once the client has
    closed a connection the handler left to `until_closed`."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.heads: list[bytes] = []
        self.accepted, self.closed = asyncio.Event(), asyncio.Event()
        self.sent, self.port = 0, 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Peer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/result.png"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.set()
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed.set()
        finally:
            writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def until_closed(self, reader: asyncio.StreamReader) -> None:
        await reader.read()  # b"" at the client's FIN; ConnectionResetError at its abort
        self.closed.set()


def respond(peer_of: Callable[[], Peer], body: bytes, *, length: int | None = None, then_stall: bool = False,
            ) -> Handler:
    """A handler: read the request, send `body` with a Content-Length (`length`, default its size)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_of()
        await peer.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n\r\n"
                     % (len(body) if length is None else length))
        for start in range(0, len(body), MIB):
            writer.write(body[start:start + MIB])
            await writer.drain()
            peer.sent = start + len(body[start:start + MIB])
        if then_stall:
            await peer.until_closed(reader)

    return handler


def certificate(folder: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for DNS name `name`, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / f"{name}.pem", folder / f"{name}.key")
    return server, ssl.create_default_context(cafile=str(folder / f"{name}.pem"))


def pin_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vetting answers 127.0.0.1 for any host, as it answers a public address in production (loopback
    itself is refused unless private addresses are allowed, and then nothing is pinned)."""

    async def vet(url: httpx.URL, policy: DownloadPolicy, resolver: object) -> str:
        return "127.0.0.1"

    monkeypatch.setattr(fetch_download, "vet", vet)


async def _lost(transport: FetchTransport) -> None:
    """Wait until every connection of `transport` is closed (asyncio closes a socket a step after abort)."""
    async with asyncio.timeout(30):
        while transport.connections:
            await asyncio.sleep(0.001)


def client(verify: ssl.SSLContext | None = None, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, transport=FetchTransport(verify=verify), **kwargs)


async def test_connecting_by_address_names_the_host_in_sni_and_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_to_loopback(monkeypatch)
    server_tls, client_tls = certificate(tmp_path, "cdn.example.test")
    names: list[str | None] = []
    server_tls.sni_callback = lambda _sock, name, _ctx: names.append(name)
    body = PNG + bytes(3 * MIB)
    peer: Peer = Peer(respond(lambda: peer, body), tls=server_tls)
    policy = DownloadPolicy(allowed_hosts=("cdn.example.test",), allow_private=True)
    async with peer, client(client_tls) as http:
        stored = await download(http, peer.url("cdn.example.test"), tmp_path / "out", policy)
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert names == ["cdn.example.test"]
    request_line, *headers = peer.heads[0].decode().split("\r\n")
    assert request_line == "GET /result.png HTTP/1.1"
    assert f"host: cdn.example.test:{peer.port}" in headers and "connection: close" in headers


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_to_loopback(monkeypatch)
    server_tls, client_tls = certificate(tmp_path, "other.example.test")
    peer: Peer = Peer(respond(lambda: peer, PNG + bytes(100)), tls=server_tls)
    policy = DownloadPolicy(allowed_hosts=("cdn.example.test",), allow_private=True)
    async with peer, client(client_tls) as http:
        with pytest.raises(DownloadError, match="ConnectError") as caught:
            await download(http, peer.url("cdn.example.test"), tmp_path / "out", policy)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(peer.url(), extensions={"sni_hostname": "cdn.example.test"})
        # The default trust store (httpx's own context) does not know a self-signed certificate at all.
        async with client() as default:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await default.get(peer.url(), extensions={"sni_hostname": "other.example.test"})
    assert caught.value.kind == "transient"
    assert peer.heads == []  # no request was ever sent
    assert not any(tmp_path.glob("out*"))


async def test_read_ahead_stays_bounded_while_the_reader_waits() -> None:
    """The server offers 32 MiB; while nothing is read, the connection holds at most its buffer
    (plus one read of the socket) and the socket is paused; the rest waits in the kernel/server."""
    body = PNG + bytes(range(256)) * (32 * 4096)
    peer: Peer = Peer(respond(lambda: peer, body))
    transport = FetchTransport()
    async with peer, httpx.AsyncClient(transport=transport) as http:
        async with http.stream("GET", peer.url()) as response:
            async with asyncio.timeout(30):  # bounds a broken run; the wait is for the paused state
                while not transport.paused:
                    await asyncio.sleep(0.001)
            assert BUFFER <= transport.buffered <= BUFFER + ONE_READ
            assert peer.sent < len(body)  # the server could not hand the rest over
            digest, size, most = hashlib.sha256(), 0, 0
            async for chunk in response.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
                most = max(most, transport.buffered)
        await _lost(transport)  # the connection is closed with its response
    assert size == len(body) and digest.hexdigest() == hashlib.sha256(body).hexdigest()
    assert most <= BUFFER + ONE_READ


async def test_cancelling_a_download_mid_body_closes_the_socket(tmp_path: Path) -> None:
    peer: Peer = Peer(respond(lambda: peer, PNG + bytes(2 * MIB), length=8 * MIB, then_stall=True))
    arrived = asyncio.Event()

    async def on_chunk(size: int) -> None:
        arrived.set()

    policy = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("http",))
    async with peer, client() as http:
        task = asyncio.create_task(download(http, peer.url(), tmp_path / "out", policy, on_chunk=on_chunk))
        await arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(30):
            await peer.closed.wait()
    assert not any(tmp_path.iterdir())


async def test_cancelling_while_waiting_for_the_response_closes_the_socket() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.head(reader)
        await peer.until_closed(reader)

    peer = Peer(silent)
    async with peer, client() as http:
        task = asyncio.create_task(http.get(peer.url()))
        async with asyncio.timeout(30):
            while not peer.heads:
                await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(30):
            await peer.closed.wait()


async def test_closing_a_response_unread_closes_the_socket() -> None:
    peer: Peer = Peer(respond(lambda: peer, PNG + bytes(MIB), length=4 * MIB, then_stall=True))
    async with peer, client() as http:
        async with http.stream("GET", peer.url()) as response:
            assert response.status_code == 200 and response.http_version == "HTTP/1.1"
        async with asyncio.timeout(30):
            await peer.closed.wait()


async def test_closing_the_client_closes_open_connections() -> None:
    peer: Peer = Peer(respond(lambda: peer, PNG + bytes(MIB), length=4 * MIB, then_stall=True))
    transport = FetchTransport()
    async with peer:
        http = httpx.AsyncClient(transport=transport)
        response = await http.send(http.build_request("GET", peer.url()), stream=True)
        assert transport.connections == 1
        await http.aclose()
        async with asyncio.timeout(30):
            await peer.closed.wait()
        await _lost(transport)
        with pytest.raises(httpx.ReadError):
            await response.aread()
        await response.aclose()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST, not FIN


async def _no_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def _short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + bytes(10))
    await writer.drain()


async def _short_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n")
    await writer.drain()


async def _reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + bytes(10))
    await writer.drain()
    _reset(writer)


@pytest.mark.parametrize(("handler", "tls", "raised"), [
    (_no_response, False, httpx.RemoteProtocolError),
    (_not_http, False, httpx.RemoteProtocolError),
    (_silent, False, httpx.ReadTimeout),  # the request is read, no answer comes
    (_silent, True, httpx.ConnectTimeout),  # TCP accepted, the TLS handshake never answered
    (_short, False, httpx.RemoteProtocolError),  # Content-Length not met: an error, not a short body
    (_short_chunked, False, httpx.RemoteProtocolError),  # no last chunk
    (_reset_mid_body, False, httpx.ReadError),
], ids=["no-response", "not-http", "read-timeout", "tls-connect-timeout", "truncated", "truncated-chunked",
        "reset"])
async def test_failures_raise_httpx_exception_types(handler: Handler, tls: bool, raised: type[Exception]) -> None:
    # For the TLS case the server speaks plain TCP and never answers the client's hello.
    peer = Peer(handler)
    timeout = httpx.Timeout(10.0, read=0.05, connect=0.05 if tls else 10.0)
    transport = FetchTransport()
    async with peer, httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        with pytest.raises(raised):
            await http.get(peer.url().replace("http:", "https:") if tls else peer.url())
        await _lost(transport)


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/result.png")


async def test_runtime_downloads_through_the_transport(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[httpx.Request] = []
    real = FetchTransport.handle_async_request

    async def spy(self: FetchTransport, request: httpx.Request) -> httpx.Response:
        used.append(request)
        return await real(self, request)

    monkeypatch.setattr(FetchTransport, "handle_async_request", spy)
    body = PNG + bytes(MIB)
    peer: Peer = Peer(respond(lambda: peer, body))
    settings = Settings.from_env({"FLUXHOOK_DB": str(tmp_path / "db.sqlite"), "FLUXHOOK_RESULTS": str(tmp_path)})
    async with peer, Runtime.open(settings) as rt:
        async with rt.cdn.stream("GET", peer.url()) as response:
            assert await response.aread() == body
        assert rt.cdn.timeout.read == min(30.0, settings.lease_seconds / 4)
        assert [str(r.url) for r in used] == [peer.url()]

"""Result downloads over real loopback connections (plain and TLS), through httpx's public
streaming API on the download client's transport (receiver/fetch/transport.py): every check of the download still made, truncation and stalls reported as
transient, chunked bodies, the hand-off of written pages to the disk. No sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import itertools
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.fetch.download import download
from receiver.fetch.errors import DownloadError
from receiver.fetch.policy import DownloadPolicy
from receiver.fetch.transport import FetchTransport
from receiver.results import local

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICY = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("http",))
LOOPS = [pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    LOOPS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Server:
    """A one-file HTTP/1.1 server on a free loopback port: `body` as image/png, then close.

    `length` overrides the Content-Length sent (None: chunked transfer encoding, ended by its
    last chunk unless `end_chunks` is False); with `stall` the server sends the headers and
    `body`, then nothing until the client gives up."""

    def __init__(self, body: bytes, content_type: str = "image/png", *, length: int | str | None = "auto",
                 stall: bool = False, tls: ssl.SSLContext | None = None, end_chunks: bool = True) -> None:
        self.body, self.content_type, self.length, self.stall, self.tls = body, content_type, length, stall, tls
        self.end_chunks = end_chunks
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/result.png"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            length = len(self.body) if self.length == "auto" else self.length
            framing = "transfer-encoding: chunked" if length is None else f"content-length: {length}"
            writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: {self.content_type}\r\n{framing}\r\n"
                         "connection: close\r\n\r\n".encode())
            for start in range(0, len(self.body), 1 << 20):
                piece = self.body[start:start + (1 << 20)]
                writer.write(piece if length is not None else b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
            if length is None and self.end_chunks:
                writer.write(b"0\r\n\r\n")
            if self.stall:
                await reader.read()  # until the client closes the connection
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def cdn(*, verify: ssl.SSLContext | None = None, **kwargs: Any) -> httpx.AsyncClient:
    """A client like Runtime.open's download client: on receiver/fetch/transport.py."""
    return httpx.AsyncClient(trust_env=False, follow_redirects=False, transport=FetchTransport(verify=verify), **kwargs)


def sends(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Record each request the download sends (through httpx's public AsyncClient.send)."""
    sent: list[httpx.Request] = []
    real = httpx.AsyncClient.send

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        sent.append(request)
        return await real(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", send)
    return sent


async def test_real_connection_stores_the_body_and_renews_as_bytes_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = PNG_MAGIC + bytes(range(256)) * (24 * 1024)  # 6 MiB
    sent = sends(monkeypatch)
    chunks: list[int] = []

    async def on_chunk(size: int) -> None:
        chunks.append(size)

    async with Server(body) as server, cdn() as http:
        stored = await download(http, server.url, tmp_path / "out", POLICY, on_chunk=on_chunk)
    assert stored.path is not None and stored.path.read_bytes() == body
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and stored.size == len(body)
    assert server.requests == 1 and len(sent) == 1
    assert list(sent[0].headers) == ["host"] and sent[0].method == "GET"  # a bare GET
    assert chunks and chunks[-1] == len(body) and len(chunks) > 6  # the lease callback runs as bytes arrive
    assert chunks == sorted(chunks)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


async def test_real_connection_still_checks_size_and_type(tmp_path: Path) -> None:
    big = PNG_MAGIC + bytes(3 * 1024 * 1024)
    policy = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("http",), max_bytes=1 << 20)
    async with Server(big) as server, cdn() as http:
        with pytest.raises(DownloadError, match="exceeds") as caught:
            await download(http, server.url, tmp_path / "big", policy)
    assert caught.value.kind == "rejected"
    # Without a Content-Length, the cap stops the body as it streams.
    async with Server(big, length=None) as server, cdn() as http:
        with pytest.raises(DownloadError, match=rf"body exceeds FLUXHOOK_MAX_DOWNLOAD_BYTES \({1 << 20} bytes\)") as caught:
            await download(http, server.url, tmp_path / "big", policy)
    assert caught.value.kind == "rejected"
    async with Server(b"GIF89a" + bytes(4096)) as server, cdn() as http:
        with pytest.raises(DownloadError, match="Content-Type says image/png"):
            await download(http, server.url, tmp_path / "gif", POLICY)
    async with Server(PNG_MAGIC + bytes(4096), "image/svg+xml") as server, cdn() as http:
        with pytest.raises(DownloadError, match="not a PNG"):
            await download(http, server.url, tmp_path / "svg", POLICY)
    assert not any(tmp_path.iterdir())


async def test_real_connection_closed_early_is_transient_and_leaves_nothing(tmp_path: Path) -> None:
    body = PNG_MAGIC + bytes(2 * 1024 * 1024)
    async with Server(body, length=len(body) + 1000) as server, cdn() as http:
        with pytest.raises(DownloadError, match=f"truncated at {len(body)} of {len(body) + 1000}") as caught:
            await download(http, server.url, tmp_path / "out", POLICY)
    assert caught.value.kind == "transient"
    assert not any(tmp_path.iterdir())


async def test_real_connection_read_timeout_is_transient(tmp_path: Path) -> None:
    """The client's read timeout bounds each read (the server never sends the rest)."""
    body = PNG_MAGIC + bytes(4096)
    timeout = httpx.Timeout(10.0, read=0.05)
    async with Server(body, length=len(body) * 2, stall=True) as server, \
            cdn(timeout=timeout) as http:
        with pytest.raises(DownloadError, match="ReadTimeout") as caught:
            await download(http, server.url, tmp_path / "out", POLICY)
    assert caught.value.kind == "transient"
    assert not any(tmp_path.iterdir())


async def test_real_connection_stalled_chunked_body_times_out(tmp_path: Path) -> None:
    body = PNG_MAGIC + bytes(4096)
    timeout = httpx.Timeout(10.0, read=0.05)
    async with Server(body, length=None, stall=True, end_chunks=False) as server, \
            cdn(timeout=timeout) as http:
        with pytest.raises(DownloadError, match="ReadTimeout") as caught:
            await download(http, server.url, tmp_path / "out", POLICY)
    assert caught.value.kind == "transient"
    assert not any(tmp_path.iterdir())


async def test_real_connection_chunked_body(tmp_path: Path) -> None:
    body = PNG_MAGIC + bytes(range(256)) * 9000
    async with Server(body, length=None) as server, cdn() as http:
        stored = await download(http, server.url, tmp_path / "out", POLICY)
    assert stored.path is not None and stored.path.read_bytes() == body
    assert stored.sha256 == hashlib.sha256(body).hexdigest()


async def test_real_connection_chunked_body_cut_short_is_transient(tmp_path: Path) -> None:
    body = PNG_MAGIC + bytes(range(256)) * 9000
    async with Server(body, length=None, end_chunks=False) as server, cdn() as http:
        with pytest.raises(DownloadError) as caught:
            await download(http, server.url, tmp_path / "out", POLICY)
    assert caught.value.kind == "transient" and "RemoteProtocolError" in str(caught.value)
    assert not any(tmp_path.iterdir())


async def test_each_mib_written_is_handed_to_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ranges: list[tuple[int, int]] = []
    monkeypatch.setattr(local, "_write_out", lambda fd, offset, length: ranges.append((offset, length)))
    mib = 1024 * 1024
    body = PNG_MAGIC + bytes(int(2.5 * mib) - len(PNG_MAGIC))
    async with Server(body) as server, cdn() as http:
        stored = await download(http, server.url, tmp_path / "out", POLICY)
    assert stored.path is not None and stored.path.read_bytes() == body
    # Contiguous ranges covering the file in order (each write is a MiB or more, the last the rest).
    assert ranges[0][0] == 0 and sum(length for _, length in ranges) == len(body)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(ranges))


def self_signed(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for 127.0.0.1, and a client context trusting it."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return server, ssl.create_default_context(cafile=str(folder / "cert.pem"))


async def test_real_tls_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Result URLs are https in production: the same body, truncation and checks over TLS."""
    body = PNG_MAGIC + bytes(range(256)) * (24 * 1024)  # 6 MiB
    server_tls, client_tls = self_signed(tmp_path)
    policy = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("https",))
    async with Server(body, tls=server_tls) as server, cdn(verify=client_tls) as http:
        stored = await download(http, server.url, tmp_path / "out", policy)
        short = Server(body, length=len(body) + 1000, tls=server_tls)
        async with short:
            with pytest.raises(DownloadError) as truncated:
                await download(http, short.url, tmp_path / "short", policy)
        chunked = Server(body, length=None, tls=server_tls)
        async with chunked:
            again = await download(http, chunked.url, tmp_path / "chunked", policy)
    assert stored.path is not None and stored.path.read_bytes() == body
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert again.path is not None and again.sha256 == stored.sha256
    assert truncated.value.kind == "transient" and "truncated" in str(truncated.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == ["chunked.png", "out.png"]


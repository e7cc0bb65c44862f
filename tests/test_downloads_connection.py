"""Result downloads over a real loopback connection: larger reads and a bounded read-ahead
(receiver.fetch.download._tune), with every check of the download still made. No sleeps."""

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

from receiver.fetch import download as downloads
from receiver.fetch.download import DownloadError, DownloadPolicy, download

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICY = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("http",))
#: The most one socket read hands the protocol, on asyncio's selector loop and on uvloop.
MAX_READ = 256 * 1024
LOOPS = [pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    LOOPS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Server:
    """A one-file HTTP/1.1 server on a free loopback port: `body` as image/png, then close.

    `length` overrides the Content-Length sent (None: chunked transfer encoding); with `stall`
    the server sends the headers and `body`, then nothing until the client gives up."""

    def __init__(self, body: bytes, content_type: str = "image/png", *, length: int | str | None = "auto",
                 stall: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self.body, self.content_type, self.length, self.stall, self.tls = body, content_type, length, stall, tls
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
            if length is None:
                writer.write(b"0\r\n\r\n")
            if self.stall:
                await reader.read()  # until the client closes the connection
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def recording(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record what _tune set on each connection, the most the read-ahead held unread, and
    whether each body was read straight from the connection."""
    seen: dict[str, Any] = {"read_sizes": [], "wrapped": 0, "received": 0, "most_queued": 0, "direct": []}
    tune, received, direct = downloads._tune, downloads._ReadAhead.data_received, downloads._direct

    def directly(response: httpx.Response, expected: int | None) -> Any:
        found = direct(response, expected)
        seen["direct"].append(found is not None)
        return found

    monkeypatch.setattr(downloads, "_direct", directly)
    seen["via"] = []
    for name in ("_anyio_reader", "_httpcore_reader"):
        def reader(*args: Any, _name: str = name, _made: Any = getattr(downloads, name)) -> Any:
            seen["via"].append(_name)
            return _made(*args)

        monkeypatch.setattr(downloads, name, reader)

    def tuned(response: httpx.Response) -> None:
        tune(response)
        connection = response.stream._stream._httpcore_stream._stream._connection  # type: ignore[attr-defined]
        seen["read_sizes"].append(connection.READ_NUM_BYTES)
        network = response.extensions["network_stream"]._stream
        network = getattr(network, "transport_stream", network)  # under TLS, the socket stream beneath
        seen["wrapped"] += isinstance(network._transport.get_protocol(), downloads._ReadAhead)

    def data_received(self: downloads._ReadAhead, data: bytes) -> None:
        received(self, data)
        seen["received"] += 1
        seen["most_queued"] = max(seen["most_queued"], sum(map(len, self.inner.read_queue)))

    monkeypatch.setattr(downloads, "_tune", tuned)
    monkeypatch.setattr(downloads._ReadAhead, "data_received", data_received)
    return seen


async def test_real_connection_reads_larger_and_bounds_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = PNG_MAGIC + bytes(range(256)) * (24 * 1024)  # 6 MiB
    seen = recording(monkeypatch)
    chunks: list[int] = []

    async def on_chunk(size: int) -> None:
        chunks.append(size)

    async with Server(body) as server, httpx.AsyncClient(trust_env=False) as http:
        stored = await download(http, server.url, tmp_path / "out", POLICY, on_chunk=on_chunk)
    assert stored.path is not None and stored.path.read_bytes() == body
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and stored.size == len(body)
    assert seen["read_sizes"] == [downloads._READ] and seen["wrapped"] == 1
    assert seen["direct"] == [True] and seen["via"] == ["_anyio_reader"] and seen["received"] > 0
    # The bound: the protocol pauses the socket once _AHEAD bytes wait unread; one read more may land.
    assert seen["most_queued"] < downloads._AHEAD + MAX_READ
    assert chunks and chunks[-1] == len(body)  # the lease callback still runs as bytes arrive


async def test_real_connection_still_checks_size_and_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = recording(monkeypatch)
    big = PNG_MAGIC + bytes(3 * 1024 * 1024)
    policy = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("http",), max_bytes=1 << 20)
    async with Server(big) as server, httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(DownloadError, match="exceeds") as caught:
            await download(http, server.url, tmp_path / "big", policy)
    assert caught.value.kind == "rejected"
    async with Server(b"GIF89a" + bytes(4096)) as server, httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(DownloadError, match="Content-Type says image/png"):
            await download(http, server.url, tmp_path / "gif", POLICY)
    # Only the GIF got as far as its body: the oversized one was refused by its Content-Length.
    assert seen["read_sizes"] == [downloads._READ] and seen["direct"] == [True]
    assert not any(tmp_path.iterdir())


async def test_real_connection_closed_early_is_transient_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = recording(monkeypatch)
    body = PNG_MAGIC + bytes(2 * 1024 * 1024)
    async with Server(body, length=len(body) + 1000) as server, httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(DownloadError, match=f"truncated at {len(body)} of {len(body) + 1000}") as caught:
            await download(http, server.url, tmp_path / "out", POLICY)
    assert caught.value.kind == "transient" and seen["direct"] == [True]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("through_httpcore", [False, True], ids=["anyio", "httpcore"])
async def test_real_connection_read_timeout_is_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through_httpcore: bool
) -> None:
    """The client's read timeout still bounds each read (the server never sends the rest), whether
    the body is read from the anyio stream itself or through httpcore's network stream."""
    seen = recording(monkeypatch)
    if through_httpcore:
        monkeypatch.setattr(downloads, "_on_asyncio", lambda: False)
    body = PNG_MAGIC + bytes(4096)
    timeout = httpx.Timeout(10.0, read=0.05)
    async with Server(body, length=len(body) * 2, stall=True) as server, \
            httpx.AsyncClient(trust_env=False, timeout=timeout) as http:
        with pytest.raises(DownloadError, match="ReadTimeout") as caught:
            await download(http, server.url, tmp_path / "out", POLICY)
    assert caught.value.kind == "transient" and seen["direct"] == [True]
    assert seen["via"] == ["_httpcore_reader" if through_httpcore else "_anyio_reader"]
    assert not any(tmp_path.iterdir())


async def test_real_connection_through_httpcore_stores_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = recording(monkeypatch)
    monkeypatch.setattr(downloads, "_on_asyncio", lambda: False)
    body = PNG_MAGIC + bytes(range(256)) * (12 * 1024)
    async with Server(body) as server, httpx.AsyncClient(trust_env=False) as http:
        stored = await download(http, server.url, tmp_path / "out", POLICY)
    assert stored.path is not None and stored.path.read_bytes() == body
    assert seen["via"] == ["_httpcore_reader"]
    async with Server(body, length=len(body) + 10) as server, httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(DownloadError, match="truncated"):
            await download(http, server.url, tmp_path / "cut", POLICY)


async def test_real_connection_chunked_body_goes_through_httpx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = recording(monkeypatch)
    body = PNG_MAGIC + bytes(range(256)) * 9000
    async with Server(body, length=None) as server, httpx.AsyncClient(trust_env=False) as http:
        stored = await download(http, server.url, tmp_path / "out", POLICY)
    assert stored.path is not None and stored.path.read_bytes() == body
    assert seen["direct"] == [False]  # no Content-Length: h11 parses the chunks


async def test_each_mib_written_is_handed_to_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver.results import local

    ranges: list[tuple[int, int]] = []
    monkeypatch.setattr(local, "_write_out", lambda fd, offset, length: ranges.append((offset, length)))
    mib = 1024 * 1024
    body = PNG_MAGIC + bytes(int(2.5 * mib) - len(PNG_MAGIC))
    async with Server(body) as server, httpx.AsyncClient(trust_env=False) as http:
        stored = await download(http, server.url, tmp_path / "out", POLICY)
    assert stored.path is not None and stored.path.read_bytes() == body
    # Contiguous ranges covering the file in order (each write is a MiB or more, the last the rest).
    assert ranges[0][0] == 0 and sum(length for _, length in ranges) == len(body)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(ranges))


class FakeTransport:
    def __init__(self) -> None:
        self.paused = 0

    def pause_reading(self) -> None:
        self.paused += 1


class FakeInner:
    def __init__(self) -> None:
        from collections import deque

        self.read_queue: Any = deque()
        self.calls: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.read_queue.append(data)

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(f"lost {exc!r}")

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_read_ahead_pauses_at_the_bound_and_forwards_the_rest() -> None:
    inner, transport = FakeInner(), FakeTransport()
    protocol = downloads._ReadAhead(inner, transport)
    step = 64 * 1024
    for _ in range(downloads._AHEAD // step - 1):
        protocol.data_received(bytes(step))
    assert transport.paused == 0
    protocol.data_received(bytes(step))  # _AHEAD bytes now wait unread
    assert transport.paused == 1
    inner.read_queue.clear()  # the stream read them (and resumes reading itself)
    protocol.data_received(bytes(downloads._AHEAD))  # one large read alone does not pause
    assert transport.paused == 1
    assert protocol.eof_received() is True
    protocol.pause_writing()
    protocol.resume_writing()
    protocol.connection_lost(None)
    assert inner.calls == ["eof", "pause_writing", "resume_writing", "lost None"]


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


async def test_real_tls_connection_reads_directly_and_bounds_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Result URLs are https in production: the direct read and the read-ahead bound must find the
    socket beneath TLS too (else downloads quietly fall back to the slow path and unbounded read-ahead)."""
    body = PNG_MAGIC + bytes(range(256)) * (24 * 1024)  # 6 MiB
    seen = recording(monkeypatch)
    server_tls, client_tls = self_signed(tmp_path)
    policy = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("https",))
    async with Server(body, tls=server_tls) as server, httpx.AsyncClient(verify=client_tls, trust_env=False) as http:
        stored = await download(http, server.url, tmp_path / "out", policy)
        short = Server(body, length=len(body) + 1000, tls=server_tls)
        async with short:
            with pytest.raises(DownloadError) as truncated:
                await download(http, short.url, tmp_path / "short", policy)
    assert stored.path is not None and stored.path.read_bytes() == body
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert seen["wrapped"] == 2 and seen["via"] == ["_anyio_reader", "_anyio_reader"]
    assert seen["most_queued"] < downloads._AHEAD + MAX_READ
    assert truncated.value.kind == "transient" and "truncated" in str(truncated.value)

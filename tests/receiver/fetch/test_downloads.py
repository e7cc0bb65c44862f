"""Tests for receiver/fetch/ (download.py, policy.py, errors.py): no real network, no sleeps."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from receiver.config.settings import Settings
from receiver.fetch.download import download
from receiver.fetch.errors import DownloadError
from receiver.fetch.policy import DownloadPolicy, Resolver, check_address
from receiver.results import local
from receiver.results.local import clean_partials
from submitter.dialects import BFL_DELIVERY_HOSTS
from submitter.hosts import host_allowed
from submitter.media import extension_for, sniff_image
from submitter.urls import redact_url, url_expiry

pytestmark = pytest.mark.anyio

PUBLIC_IP = "93.184.216.34"
SIG = "sig=S3CR3T%2Bsignature"
URL = f"https://delivery-eu1.bfl.ai/results/abc/sample.png?se=2026-11-21T10%3A10%3A00Z&sp=r&{SIG}"
POLICY = DownloadPolicy(allowed_hosts=BFL_DELIVERY_HOSTS)
HTTP_POLICY = DownloadPolicy(allowed_hosts=BFL_DELIVERY_HOSTS, schemes=("https", "http"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG = PNG_MAGIC + bytes(range(256)) * 1000
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(300)
GIF = b"GIF89a\x10\x00\x10\x00" + bytes(300)
WEBP = b"RIFF" + struct.pack("<I", 304) + b"WEBPVP8 " + bytes(300)
AVIF = struct.pack(">I", 28) + b"ftypavif" + bytes(4) + b"avifmif1miaf" + bytes(300)
HEIC = struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic" + bytes(300)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.cookie)</script></svg>'
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def public(host: str) -> list[str]:
    return [PUBLIC_IP]


def resolving(table: dict[str, list[str]]) -> Resolver:
    async def resolve(host: str) -> list[str]:
        return table[host]

    return resolve


def client(handler: Handler, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]


def image(body: bytes = PNG, content_type: str = "image/png") -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    return handler


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def fetch(handler: Handler, dest: Path, url: str = URL, policy: DownloadPolicy = POLICY, **kw: object):
    async with client(handler, **kw) as http:
        return await download(http, url, dest, policy, resolver=public)


async def expect(kind: str, handler: Handler, dest: Path, url: str = URL, policy: DownloadPolicy = POLICY):
    with pytest.raises(DownloadError) as info:
        await fetch(handler, dest, url, policy)
    assert info.value.kind == kind
    assert "S3CR3T" not in str(info.value) and "sig=" not in str(info.value)
    assert not list(dest.parent.glob(".*.part"))
    return info.value


# --- download: success ---------------------------------------------------------------------------------------


async def test_png_stored_atomically(tmp_path: Path) -> None:
    dest = tmp_path / "results" / "job1" / "0"
    stored = await fetch(image(content_type="image/png; charset=binary"), dest)
    assert stored.path == dest.parent / "0.png" and stored.path.is_absolute()
    assert stored.path.read_bytes() == PNG
    assert stored.size == len(PNG)
    assert stored.sha256 == hashlib.sha256(PNG).hexdigest()
    assert stored.content_type == "image/png"
    assert files(tmp_path) == ["results/job1/0.png"]


async def test_jpeg_gets_jpg_extension_from_content_type(tmp_path: Path) -> None:
    stored = await fetch(image(b"\xff\xd8\xff jpeg", "image/jpeg"), tmp_path / "0")
    assert stored.path.name == "0.jpg"  # not .png, whatever the URL says


async def test_overwrites_previous_result(tmp_path: Path) -> None:
    (tmp_path / "0.png").write_bytes(b"old")
    stored = await fetch(image(), tmp_path / "0")
    assert stored.path.read_bytes() == PNG


async def test_sends_no_credentials_headers_or_cookies(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return image()(request)

    misconfigured = {"headers": {"x-key": "k", "Authorization": "Bearer t"}, "auth": ("u", "p"), "cookies": {"c": "1"}}
    await fetch(handler, tmp_path / "0", **misconfigured)
    (request,) = seen
    assert request.method == "GET"
    for name in ("authorization", "x-key", "cookie"):
        assert name not in request.headers
    # Pinned to the vetted address; TLS and Host still name the original host; path and query intact.
    original = httpx.URL(URL)
    assert request.url == original.copy_with(host="93.184.216.34")
    assert request.headers["host"] == original.host
    assert request.extensions["sni_hostname"] == original.host


async def test_connects_to_the_address_it_checked(tmp_path: Path) -> None:
    """DNS rebinding: the name is resolved once, vetted, and that address is the one connected to."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    resolved: list[str] = []

    async def rebinding(host: str) -> list[str]:
        resolved.append(host)
        return next(answers)

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return image()(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        await download(http, URL, tmp_path / "0", POLICY, resolver=rebinding)
    assert resolved == ["delivery-eu1.bfl.ai"]  # one lookup: the transport is never left to resolve again
    assert seen[0].url.host == "93.184.216.34"


async def test_allow_private_permits_local_simulator(tmp_path: Path) -> None:
    policy = DownloadPolicy(allowed_hosts=("127.0.0.1",), allow_private=True, schemes=("https", "http"))
    stored = await fetch(image(), tmp_path / "0", "http://127.0.0.1:8080/sample.png", policy)
    assert stored.size == len(PNG)


# --- download: rejected responses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/html", "application/octet-stream", "", "image/", "image/svg+xml", "image/svg+xml; charset=utf-8",
     "IMAGE/SVG+XML", "image/tiff", "image/bmp", "image/x-icon", "image/heic", "image/png+xml"],
)
async def test_non_raster_type_rejected_before_the_body_is_read(tmp_path: Path, content_type: str) -> None:
    yielded, body = counting_body(3, prefix=SVG)
    error = await expect("rejected", lambda r: httpx.Response(200, headers={"content-type": content_type},
                                                              content=body), tmp_path / "r" / "0")
    assert "not a PNG, JPEG, WebP, GIF or AVIF image" in str(error)
    assert yielded == [0]
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    ("body", "content_type", "name", "verified"),
    [
        (PNG, "image/png", "0.png", "image/png"),
        (JPEG, "image/jpeg", "0.jpg", "image/jpeg"),
        (JPEG, "image/jpg", "0.jpg", "image/jpeg"),  # a common alias: stored under the real name
        (JPEG, "Image/JPEG; q=1", "0.jpg", "image/jpeg"),
        (GIF, "image/gif", "0.gif", "image/gif"),
        (GIF.replace(b"GIF89a", b"GIF87a"), "image/gif", "0.gif", "image/gif"),
        (WEBP, "image/webp", "0.webp", "image/webp"),
        (AVIF, "image/avif", "0.avif", "image/avif"),
        (JPEG[:3], "image/jpeg", "0.jpg", "image/jpeg"),  # shorter than the sniffing window
    ],
)
async def test_raster_types_stored_with_their_extension_and_verified_type(
    tmp_path: Path, body: bytes, content_type: str, name: str, verified: str
) -> None:
    stored = await fetch(image(body, content_type), tmp_path / "0")
    assert stored.path.name == name and stored.content_type == verified
    assert stored.path.read_bytes() == body
    assert files(tmp_path) == [name]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (JPEG, "image/png"),  # a PNG header with JPEG bytes
        (PNG, "image/jpeg"),
        (WEBP, "image/gif"),
        (SVG, "image/png"),  # a script dressed up as a PNG
        (b"<html><script>x</script></html>" * 20, "image/jpeg"),
        (b"II*\x00" + bytes(300), "image/png"),  # TIFF
        (HEIC, "image/avif"),  # the same box structure, not AVIF's brands
        (b"RIFF" + bytes(4) + b"WAVEfmt " + bytes(300), "image/webp"),
        (b"\x89PNG", "image/png"),  # a magic cut short
        (b"x", "image/gif"),
    ],
)
async def test_body_must_be_the_image_type_its_header_claims(tmp_path: Path, body: bytes, content_type: str) -> None:
    """Header and bytes must agree; a file they disagree on is refused, not stored under either type."""
    error = await expect("rejected", image(body, content_type), tmp_path / "r" / "0")
    assert "body is" in str(error)
    assert files(tmp_path) == []


async def test_type_is_checked_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real_absorb = local._absorb
    monkeypatch.setattr(local, "_absorb", lambda fp, digest, parts: writes.append(sum(map(len, parts))) or real_absorb(
        fp, digest, parts))
    yielded, body = counting_body(100, prefix=SVG)
    await expect("rejected", lambda r: httpx.Response(200, headers={"content-type": "image/png"}, content=body),
                 tmp_path / "0")
    assert yielded == [1] and writes == []


def test_sniff_image() -> None:
    assert sniff_image(PNG) == "image/png"
    assert sniff_image(JPEG) == "image/jpeg"
    assert sniff_image(GIF) == "image/gif"
    assert sniff_image(WEBP) == "image/webp"
    assert sniff_image(AVIF) == "image/avif"
    sequence = struct.pack(">I", 24) + b"ftypavis" + bytes(4) + b"avismsf1"
    assert sniff_image(sequence) == "image/avif"
    compatible = struct.pack(">I", 24) + b"ftypmif1" + bytes(4) + b"mif1avif"
    assert sniff_image(compatible) == "image/avif"
    for other in (HEIC, SVG, b"", b"\x89PN", b"RIFF", b"\x00\x00\x00\x1cftypavif",  # box longer than the bytes
                  struct.pack(">I", 1) + b"ftypavif" + bytes(20),  # 64-bit box size
                  struct.pack(">I", 27) + b"ftypavif" + bytes(19)):  # not a whole number of brands
        assert sniff_image(other) is None


def counting_body(
    chunks: int, size: int = 64 * 1024, prefix: bytes = PNG_MAGIC
) -> tuple[list[int], AsyncIterator[bytes]]:
    yielded = [0]

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yielded[0] += 1
            yield (prefix + b"x" * size)[:size]

    return yielded, body()


async def test_oversize_content_length_rejected_before_reading(tmp_path: Path) -> None:
    yielded, body = counting_body(10)
    headers = {"content-type": "image/png", "content-length": str(10 * 64 * 1024)}
    policy = DownloadPolicy(allowed_hosts=("*.bfl.ai",), max_bytes=100_000)
    error = await expect("rejected", lambda r: httpx.Response(200, headers=headers, content=body), tmp_path / "0",
                         URL, policy)
    # The message names the setting to raise, not only the numbers.
    assert f"body of {10 * 64 * 1024} bytes exceeds FLUXHOOK_MAX_DOWNLOAD_BYTES (100000)" in str(error)
    assert yielded == [0]
    assert files(tmp_path) == []


async def test_oversize_stream_aborts_early(tmp_path: Path) -> None:
    yielded, body = counting_body(100)
    policy = DownloadPolicy(allowed_hosts=("*.bfl.ai",), max_bytes=100_000)
    error = await expect(
        "rejected", lambda r: httpx.Response(200, headers={"content-type": "image/png"}, content=body),
        tmp_path / "0", URL, policy,
    )
    assert "body exceeds FLUXHOOK_MAX_DOWNLOAD_BYTES (100000 bytes)" in str(error)
    assert yielded[0] < 5
    assert files(tmp_path) == []


async def test_truncated_body_is_transient(tmp_path: Path) -> None:
    headers = {"content-type": "image/png", "content-length": str(len(PNG) + 10)}
    await expect("transient", lambda r: httpx.Response(200, headers=headers, content=PNG), tmp_path / "0")
    assert files(tmp_path) == []


async def test_compressed_body_rejected(tmp_path: Path) -> None:
    headers = {"content-type": "image/png", "content-encoding": "gzip"}
    await expect("rejected", lambda r: httpx.Response(200, headers=headers, content=b"x"), tmp_path / "0")


# --- download: URL and address checks --------------------------------------------------------------------------


def unreachable(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"request must not be sent: {request.url}")


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/sample.png",
        "https://bfl.ai.evil.com/sample.png",
        "https://user:pw@delivery-eu1.bfl.ai/sample.png",
        "ftp://delivery-eu1.bfl.ai/sample.png",
        "file:///etc/passwd",
        "not a url",
    ],
)
async def test_disallowed_url_rejected_without_request(tmp_path: Path, url: str) -> None:
    await expect("rejected", unreachable, tmp_path / "0", url)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "[::1]", "[fd00:ec2::254]"])
async def test_private_ip_literal_rejected(tmp_path: Path, host: str) -> None:
    policy = DownloadPolicy(allowed_hosts=("*",), schemes=("https", "http"))
    for scheme in ("https", "http"):
        error = await expect("rejected", unreachable, tmp_path / "0", f"{scheme}://{host}/latest/meta-data/", policy)
        assert "non-public" in str(error)


@pytest.mark.parametrize(
    "host",
    [
        "evil.com\\.bfl.ai",  # httpx passes a backslash through verbatim
        "evil.com%00.bfl.ai",  # and percent-escapes
        "evil.com%2e.bfl.ai",
        "evil.com%5c.bfl.ai",
        "evil .bfl.ai",  # a space (httpx sends it as %20)
        "a_b.bfl.ai",
        "a..bfl.ai",
        ".bfl.ai",
        "delivery.bfl.ai..",
        "-x.bfl.ai",
        "xn--zz.bfl.ai",  # not a valid A-label
        "evil.com\x00.bfl.ai",  # httpx refuses this one itself
        "bfl.ai",  # the pattern is *.bfl.ai: subdomains only
        "attacker.blob.core.windows.net",  # any Azure storage account: not BFL's
        "bfldeliveryprodeu4.blob.core.windows.net.evil.com",
    ],
)
async def test_tricky_hosts_rejected_without_request(tmp_path: Path, host: str) -> None:
    error = await expect("rejected", unreachable, tmp_path / "0", f"https://{host}/results/sample.png?{SIG}")
    assert "invalid URL" in str(error) or "FLUXHOOK_DOWNLOAD_HOSTS" in str(error)


@pytest.mark.parametrize(
    "host",
    ["DELIVERY-EU1.BFL.AI", "delivery-eu1.bfl.ai.", "bücher.bfl.ai", "BÜCHER.bfl.ai", "delivery.eu2.bfl.ai",
     "bfldeliveryprodeu4.blob.core.windows.net", "bfldeliveryprod.blob.core.windows.net"],
)
async def test_bfl_delivery_hosts_accepted(tmp_path: Path, host: str) -> None:
    stored = await fetch(image(), tmp_path / "0", f"https://{host}/results/sample.png?{SIG}")
    assert stored.size == len(PNG)


async def test_disallowed_host_error_names_the_setting(tmp_path: Path) -> None:
    error = await expect("rejected", unreachable, tmp_path / "0", "https://attacker.blob.core.windows.net/r/x.png")
    assert "FLUXHOOK_DOWNLOAD_HOSTS" in str(error)
    assert "'attacker.blob.core.windows.net' not allowed" in str(error)
    assert "bfldeliveryprodeu4.blob.core.windows.net" in str(error)  # what is allowed now


async def test_plain_http_rejected_by_default(tmp_path: Path) -> None:
    assert DownloadPolicy(allowed_hosts=("*",)).schemes == ("https",)
    url = "http://delivery-eu1.bfl.ai/results/sample.png"
    error = await expect("rejected", unreachable, tmp_path / "0", url)
    assert "FLUXHOOK_DOWNLOAD_ALLOW_HTTP" in str(error)
    assert (await fetch(image(), tmp_path / "0", url, HTTP_POLICY)).size == len(PNG)


async def test_redirect_to_plain_http_rejected(tmp_path: Path) -> None:
    await expect("rejected", redirecting("http://delivery-eu1.bfl.ai/results/a.png"), tmp_path / "0")
    stored = await fetch(redirecting("http://delivery-us1.bfl.ai/a.png"), tmp_path / "0", URL, HTTP_POLICY)
    assert stored.size == len(PNG)


def test_policy_from_settings() -> None:
    default = DownloadPolicy.from_settings(Settings.from_env({}), "bfl")
    assert default == DownloadPolicy(allowed_hosts=BFL_DELIVERY_HOSTS, schemes=("https",))
    assert "*.blob.core.windows.net" not in default.allowed_hosts
    assert DownloadPolicy.from_settings(Settings.from_env({}), "replicate").allowed_hosts == (
        "replicate.delivery", "*.replicate.delivery")
    env = {"FLUXHOOK_DOWNLOAD_HOSTS": "*.bfl.ai, *.blob.core.windows.net", "FLUXHOOK_DOWNLOAD_ALLOW_HTTP": "1",
           "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE": "1", "FLUXHOOK_MAX_DOWNLOAD_BYTES": "1000"}
    widened = DownloadPolicy.from_settings(Settings.from_env(env), "bfl")
    assert widened == DownloadPolicy(allowed_hosts=("*.bfl.ai", "*.blob.core.windows.net"), allow_private=True,
                                     max_bytes=1000, schemes=("https", "http"))


async def test_host_resolving_to_private_address_rejected(tmp_path: Path) -> None:
    async with client(unreachable) as http:
        with pytest.raises(DownloadError) as info:
            resolver = resolving({"delivery-eu1.bfl.ai": [PUBLIC_IP, "10.0.0.7"]})
            await download(http, URL, tmp_path / "0", POLICY, resolver=resolver)
    assert info.value.kind == "rejected"


# --- download: redirects ---------------------------------------------------------------------------------------


def redirecting(location: str, status: int = 302) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "delivery-eu1.bfl.ai":  # connections go to the pinned address
            return httpx.Response(status, headers={"location": location})
        return image()(request)

    return handler


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_to_allowed_host_followed(tmp_path: Path, status: int) -> None:
    location = "https://bfldeliveryprodeu4.blob.core.windows.net/results/a.png?sig=other"
    stored = await fetch(redirecting(location, status), tmp_path / "0")
    assert stored.path.read_bytes() == PNG


async def test_relative_redirect_resolved(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path != "/results/final.png":
            return httpx.Response(302, headers={"location": "../final.png"})
        return image()(request)

    await fetch(handler, tmp_path / "0")
    assert seen == ["/results/abc/sample.png", "/results/final.png"]


@pytest.mark.parametrize(
    "location",
    ["https://evil.example.com/a.png", "http://169.254.169.254/latest/meta-data/",
     "https://169.254.169.254/latest/meta-data/", "https://x.blob.core.windows.net/a.png",
     "https://evil.com\\.bfl.ai/a.png", "file:///etc/passwd", ""],
)
async def test_redirect_to_disallowed_target_rejected(tmp_path: Path, location: str) -> None:
    policy = DownloadPolicy(allowed_hosts=("*.bfl.ai", "169.254.169.254"))  # the address check still applies
    await expect("rejected", redirecting(location), tmp_path / "0", URL, policy)


async def test_redirect_to_host_resolving_private_rejected(tmp_path: Path) -> None:
    resolver = resolving({"delivery-eu1.bfl.ai": [PUBLIC_IP], "internal.bfl.ai": ["192.168.0.10"]})
    async with client(redirecting("https://internal.bfl.ai/a.png")) as http:
        with pytest.raises(DownloadError) as info:
            await download(http, URL, tmp_path / "0", POLICY, resolver=resolver)
    assert info.value.kind == "rejected"


async def test_too_many_redirects(tmp_path: Path) -> None:
    hops: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hops.append(request.url)
        return httpx.Response(302, headers={"location": f"/hop/{len(hops)}"})

    policy = DownloadPolicy(allowed_hosts=("*.bfl.ai",), max_redirects=2)
    error = await expect("rejected", handler, tmp_path / "0", URL, policy)
    assert len(hops) == 3 and "redirects" in str(error)


# --- download: status and transport errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, "expired"), (403, "expired"), (404, "expired"), (410, "expired"), (408, "transient"),
     (429, "transient"), (500, "transient"), (503, "transient"), (400, "rejected"), (204, "rejected")],
)
async def test_status_mapping(tmp_path: Path, status: int, kind: str) -> None:
    error = await expect(kind, lambda r: httpx.Response(status, text="AuthenticationFailed"), tmp_path / "0")
    assert f"HTTP {status}" in str(error)
    assert "delivery-eu1.bfl.ai/…/sample.png" in str(error) and "results/abc" not in str(error)


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_transport_errors_are_transient(tmp_path: Path, exc: type[httpx.TransportError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc(f"failed for {request.url}", request=request)

    await expect("transient", handler, tmp_path / "0")


async def test_error_mid_body_is_transient_and_cleaned(tmp_path: Path) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield PNG[:70_000]
        raise httpx.ReadError("connection reset")

    await expect("transient", lambda r: httpx.Response(200, headers={"content-type": "image/png"}, content=body()),
                 tmp_path / "0")
    assert files(tmp_path) == []


async def test_disk_full_is_transient_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open_file = anyio.open_file

    class FullDisk:
        def __init__(self, fp: object) -> None:
            self.fp = fp

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> object:
            return getattr(self.fp, name)

    async def open_file(*args: object, **kwargs: object) -> anyio.AsyncFile[bytes]:
        return anyio.AsyncFile(FullDisk((await real_open_file(*args, **kwargs)).wrapped))  # type: ignore[arg-type]

    monkeypatch.setattr(anyio, "open_file", open_file)
    error = await expect("transient", image(), tmp_path / "0")
    assert "ENOSPC" in str(error)
    assert files(tmp_path) == []


async def test_fsync_failure_is_transient_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(local.os, "fsync", fsync)
    await expect("transient", image(), tmp_path / "0")
    assert files(tmp_path) == []


async def test_cancellation_leaves_no_partial(tmp_path: Path) -> None:
    started = anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield PNG[:70_000]
        started.set()
        await anyio.sleep_forever()
        yield b""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=body())

    async with anyio.create_task_group() as tg:
        tg.start_soon(fetch, handler, tmp_path / "0")
        await started.wait()
        (partial,) = tmp_path.iterdir()
        assert partial.name.startswith(".0.") and partial.name.endswith(".part")
        tg.cancel_scope.cancel()
    assert files(tmp_path) == []


# --- helpers ---------------------------------------------------------------------------------------------------


def test_redact_url_hides_secrets() -> None:
    assert redact_url(URL) == "https://delivery-eu1.bfl.ai/…/sample.png"
    assert redact_url("https://u:p@Host.example:8443/a/b?sig=x#frag") == "https://host.example:8443/…/b"
    # Replicate's delivery paths grant access by themselves: only the file name is shown.
    assert redact_url("https://replicate.delivery/xezq/AbCdSecretPath/out-0.png") == "https://replicate.delivery/…/out-0.png"
    assert redact_url("http://[::1]:8080/x?k=v") == "http://[::1]:8080/x"
    assert redact_url("http://[::1/x") == "<invalid URL>"
    assert redact_url("no scheme?sig=x") == "<invalid URL>"


def epoch(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (URL, epoch(2026, 11, 21, 10, 10)),
        ("https://a.blob.core.windows.net/r/x.png?se=2026-11-21T10:10:00Z&sig=x", epoch(2026, 11, 21, 10, 10)),
        ("https://a.blob.core.windows.net/r/x.png?se=2026-11-21T10%3A10%3A00.0000000Z", epoch(2026, 11, 21, 10, 10)),
        ("https://a.blob.core.windows.net/r/x.png?se=2026-11-21&sig=x", epoch(2026, 11, 21)),
        ("https://b.s3.amazonaws.com/x?X-Amz-Date=20261121T101000Z&X-Amz-Expires=3600&X-Amz-Signature=s",
         epoch(2026, 11, 21, 11, 10)),
        ("https://storage.googleapis.com/b/x?X-Goog-Date=20261121T101000Z&X-Goog-Expires=600",
         epoch(2026, 11, 21, 10, 20)),
        ("https://d.cloudfront.net/x.png?Expires=1795256400&Signature=s&Key-Pair-Id=k", 1795256400.0),
        ("https://replicate.delivery/xezq/abc/out-0.webp", None),
        ("https://a.blob.core.windows.net/x?se=tomorrow", None),
        ("https://b.s3.amazonaws.com/x?X-Amz-Date=2026&X-Amz-Expires=60", None),
        ("https://b.s3.amazonaws.com/x?X-Amz-Date=20261121T101000Z&X-Amz-Expires=-5", None),
        ("https://d.cloudfront.net/x?Expires=1e9", None),
        ("https://d.cloudfront.net/x?Expires=" + "9" * 5000, None),
        ("http://[::1/x?se=2026-11-21", None),
        ("", None),
    ],
)
def test_url_expiry(url: str, expected: float | None) -> None:
    assert url_expiry(url) == expected


def test_host_allowed() -> None:
    patterns = ("*.bfl.ai", "images.example.com")
    assert host_allowed("delivery-eu1.bfl.ai", patterns)
    assert host_allowed("delivery.eu2.bfl.ai", patterns)
    assert host_allowed("Delivery-US1.BFL.ai.", patterns)
    assert host_allowed("images.example.com", patterns)
    assert not host_allowed("bfl.ai", patterns)
    assert not host_allowed("evilbfl.ai", patterns)
    assert not host_allowed("bfl.ai.evil.com", patterns)
    assert not host_allowed("cdn.images.example.com", patterns)
    assert not host_allowed("", ("*",))
    assert host_allowed("anything.example", ("*",))
    assert not host_allowed("anything.example", ())


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.1.1", "100.64.0.1",
     "0.0.0.0", "224.0.0.1", "239.1.2.3", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "fec0::1",
     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::", "ff02::1"],
)
async def test_check_address_rejects_non_public(address: str) -> None:
    with pytest.raises(DownloadError) as info:
        await check_address(address, POLICY)
    assert info.value.kind == "rejected"
    with pytest.raises(DownloadError):
        await check_address("h.bfl.ai", POLICY, resolving({"h.bfl.ai": [address]}))
    await check_address(address, DownloadPolicy(allowed_hosts=("*",), allow_private=True))


async def test_check_address_accepts_public() -> None:
    await check_address(PUBLIC_IP, POLICY)
    await check_address("[2606:4700::6810:84e5]", POLICY)
    await check_address("h.bfl.ai", POLICY, resolving({"h.bfl.ai": [PUBLIC_IP, "2606:4700::6810:84e5"]}))


async def test_check_address_resolution_failure_is_transient() -> None:
    async def failing(host: str) -> list[str]:
        raise OSError("Name or service not known")

    for resolver in (failing, resolving({"h.bfl.ai": []})):
        with pytest.raises(DownloadError) as info:
            await check_address("h.bfl.ai", POLICY, resolver)
        assert info.value.kind == "transient"


async def test_allow_private_skips_resolution() -> None:
    async def never(host: str) -> list[str]:
        raise AssertionError("resolver called")

    await check_address("localhost", DownloadPolicy(allowed_hosts=("*",), allow_private=True), never)


def test_clean_partials_removes_only_old_temp_files(tmp_path: Path) -> None:
    """A fresh temp file may be another process's download in progress (an overlapping sweep, a replica)."""
    (tmp_path / "j1" / "sub").mkdir(parents=True)
    for name in ("j1/.0.1a2b.part", "j1/sub/.1.3c4d.part", "j1/.2.5e6f.part", "j1/0.png", "j1/notes.part",
                 "j1/.keep", "j1/.old.png"):
        (tmp_path / name).write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    for name in ("j1/.0.1a2b.part", "j1/sub/.1.3c4d.part", "j1/0.png", "j1/notes.part", "j1/.old.png"):
        os.utime(tmp_path / name, (an_hour_ago, an_hour_ago))
    assert clean_partials(tmp_path, older_than=360) == 2
    assert files(tmp_path) == ["j1/.2.5e6f.part", "j1/.keep", "j1/.old.png", "j1/0.png", "j1/notes.part"]
    assert clean_partials(tmp_path, older_than=360) == 0  # the running download's file survives
    assert clean_partials(tmp_path, older_than=-1) == 1  # once it is older than the limit, it goes
    assert files(tmp_path) == ["j1/.keep", "j1/.old.png", "j1/0.png", "j1/notes.part"]
    assert clean_partials(tmp_path / "missing", older_than=0) == 0


async def test_clean_partials_spares_a_download_in_progress(tmp_path: Path) -> None:
    started, release = anyio.Event(), anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield PNG[:70_000]
        started.set()
        await release.wait()
        yield PNG[70_000:]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=body())

    result: list[object] = []

    async def run() -> None:
        result.append(await fetch(handler, tmp_path / "0"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        assert clean_partials(tmp_path, older_than=300 + 60) == 0
        release.set()
    assert files(tmp_path) == ["0.png"] and (tmp_path / "0.png").read_bytes() == PNG


def test_extension_for() -> None:
    assert extension_for("image/png") == "png"
    assert extension_for("IMAGE/JPEG; q=1") == "jpg"
    assert extension_for("image/jpg") == "jpg"
    assert extension_for("image/webp") == "webp"
    assert extension_for("image/gif") == "gif"
    assert extension_for("image/avif") == "avif"
    for other in ("image/svg+xml", "image/tiff", "image/", "text/plain", ""):
        with pytest.raises(ValueError, match="not an accepted image type"):
            extension_for(other)


# --- progress callback ----------------------------------------------------------------------------------------


def trickling(data: bytes, piece: int) -> Handler:
    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), piece):
            yield data[start:start + piece]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=body())

    return handler


async def test_on_chunk_after_every_chunk_of_a_slow_download(tmp_path: Path) -> None:
    """A server trickling a few bytes at a time still gets the caller's lease renewed: the callback
    runs after every chunk received, not once per MiB buffered."""
    sizes: list[int] = []

    async def on_chunk(size: int) -> None:
        sizes.append(size)

    body = PNG[:5000]
    async with client(trickling(body, 10)) as http:
        stored = await download(http, URL, tmp_path / "0", POLICY, resolver=public, on_chunk=on_chunk)
    assert sizes == list(range(10, 5001, 10))  # once per chunk, with the size so far
    assert stored.path.read_bytes() == body


async def test_writes_still_go_to_the_thread_once_per_mib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real_absorb = local._absorb
    monkeypatch.setattr(local, "_absorb", lambda fp, digest, parts: writes.append(sum(map(len, parts))) or real_absorb(
        fp, digest, parts))
    sizes: list[int] = []

    async def on_chunk(size: int) -> None:
        sizes.append(size)

    mib = 1024 * 1024
    body = PNG_MAGIC + bytes(int(2.5 * mib) - len(PNG_MAGIC))
    async with client(trickling(body, 64 * 1024)) as http:
        stored = await download(http, URL, tmp_path / "0", POLICY, resolver=public, on_chunk=on_chunk)
    assert writes == [mib, mib, mib // 2]
    assert len(sizes) == 40 and sizes[-1] == len(body)
    assert stored.sha256 == hashlib.sha256(body).hexdigest()


async def test_an_internationalised_host_is_pinned_by_its_ascii_name(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return image()(request)

    policy = DownloadPolicy(allowed_hosts=("*",))
    async with client(handler) as http:
        stored = await download(http, "https://bücher.example/a.png", tmp_path / "0", policy, resolver=public)
    assert stored.size == len(PNG)
    assert seen[0].headers["host"] == "xn--bcher-kva.example"
    assert seen[0].extensions["sni_hostname"] == "xn--bcher-kva.example"

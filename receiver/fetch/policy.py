"""What a result download may fetch and accept: schemes, hosts and their addresses (never a
private one), the status, headers, size and type of the answer.

Result URLs arrive in callbacks and poll responses, are signed and short-lived (BFL: about ten
minutes), and are treated as untrusted input. Every hop is checked against allowed schemes
(https only, unless FLUXHOOK_DOWNLOAD_ALLOW_HTTP) and hosts and against private addresses; the
body must be a raster image (PNG, JPEG, WebP, GIF or AVIF: its first bytes and its Content-Type
must agree; never SVG, which carries scripts) no larger than a cap.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import httpx

from receiver.fetch.errors import DownloadError, Kind, error
from submitter.hosts import host_allowed
from submitter.media import IMAGE_TYPES, media_type, sniff_image

if TYPE_CHECKING:
    from receiver.config.settings import Settings

__all__ = [
    "CAP_SETTING", "DownloadPolicy", "Resolver", "check_address", "check_response", "content_length", "verify_type",
    "vet",
]

Resolver = Callable[[str], Awaitable[list[str]]]

_EXPIRED = frozenset({401, 403, 404, 410})
_RETRYABLE = frozenset({408, 425, 429})
_METADATA = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254")))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


#: The setting behind `max_bytes`: a body over the cap is refused with a message naming it.
CAP_SETTING = "FLUXHOOK_MAX_DOWNLOAD_BYTES"


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


async def vet(url: httpx.URL, policy: DownloadPolicy, resolver: Resolver | None) -> str | None:
    """Check one hop's scheme, credentials and host, then its address (see check_address)."""
    if url.scheme not in policy.schemes:
        hint = " (plain http needs FLUXHOOK_DOWNLOAD_ALLOW_HTTP=1)" if url.scheme == "http" else ""
        raise error("rejected", f"scheme {url.scheme!r} not allowed{hint}", url)
    if url.userinfo:
        raise error("rejected", "credentials in URL", url)
    host = url.raw_host.decode("ascii", "replace")
    if not host_allowed(host, policy.allowed_hosts):
        allowed = ", ".join(policy.allowed_hosts) or "none"
        raise error("rejected", f"host {host!r} not allowed (allowed: {allowed}; set FLUXHOOK_DOWNLOAD_HOSTS to "
                                "change the list)", url)
    return await check_address(host, policy, resolver)


def check_response(response: httpx.Response, url: httpx.URL, policy: DownloadPolicy) -> str:
    """Vet status and headers before any of the body is read; return the media type."""
    status = response.status_code
    if status != 200:
        if status in _EXPIRED:
            raise error("expired", f"HTTP {status} (URL expired or revoked)", url)
        kind: Kind = "transient" if status in _RETRYABLE or status >= 500 else "rejected"
        raise error(kind, f"HTTP {status}", url)
    media = media_type(response.headers.get("content-type", ""))
    if media not in IMAGE_TYPES:
        raise error("rejected", f"content type {media or 'missing'!r} is not a PNG, JPEG, WebP, GIF or AVIF image",
                    url)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise error("rejected", f"unexpected content encoding {encoding!r}", url)
    length = content_length(response)
    if length is not None and length > policy.max_bytes:
        raise error("rejected", f"body of {length} bytes exceeds {CAP_SETTING} ({policy.max_bytes})", url)
    return media


def content_length(response: httpx.Response) -> int | None:
    """The Content-Length header's value, or None when there is none (or it is not a number)."""
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def verify_type(head: bytes, media: str, url: httpx.URL) -> None:
    """The body's first bytes must show the type its Content-Type claims. On a mismatch the
    file is refused, not stored under the type its bytes show: the sender's two accounts of
    the file disagree, and nothing is kept that neither the header nor the bytes vouch for."""
    found = sniff_image(head)
    if found is None:
        raise error("rejected", f"body is not a PNG, JPEG, WebP, GIF or AVIF image (Content-Type {media})", url)
    if found != media:
        raise error("rejected", f"body is {found} but Content-Type says {media}", url)

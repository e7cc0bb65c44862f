"""Host allow-lists: hosts and patterns compared as normalised labels; malformed hosts match nothing."""

from __future__ import annotations

import pytest

from submitter.dialects import BFL_DELIVERY_HOSTS, DIALECTS
from submitter.hosts import host_allowed, normalise_host

BFL = ("*.bfl.ai",)
LABEL_63 = "a" * 63
NAME_253 = ".".join([LABEL_63] * 3 + ["b" * 58, "ai"])  # the longest name allowed


def test_length_limits() -> None:
    assert len(NAME_253) == 253
    assert host_allowed(NAME_253, ("*.ai",)) and host_allowed(NAME_253 + ".", ("*.ai",))
    assert not host_allowed("b" + NAME_253, ("*.ai",))


@pytest.mark.parametrize(
    "host",
    [
        "evil.com\\.bfl.ai",  # httpx passes a backslash through verbatim as part of the host
        "evil.com%00.bfl.ai",  # and percent-escapes
        "evil.com%2e.bfl.ai",
        "evil.com%5c.bfl.ai",
        "x.bfl.ai%2e",
        "evil.com\x00.bfl.ai",  # NUL
        "evil.com .bfl.ai",  # spaces
        " x.bfl.ai",
        "x.bfl.ai ",
        "evil.com\t.bfl.ai",
        "a_b.bfl.ai",  # underscores are not LDH
        "_dmarc.bfl.ai",
        "a..bfl.ai",  # empty labels
        ".bfl.ai",
        "x.bfl.ai..",
        "-x.bfl.ai",  # hyphens at a label's ends
        "x-.bfl.ai",
        "evil.com/.bfl.ai",
        "evil.com@x.bfl.ai",
        "evil.com:443.bfl.ai",
        "evil.com?.bfl.ai",
        "evil.com#.bfl.ai",
        "\uff58.bfl.ai",  # fullwidth letters: httpx refuses them too (IDNA 2008, no mapping)
        "xn--zz.bfl.ai",  # not a valid A-label
        LABEL_63 + "a.bfl.ai",  # a 64-character label
        "a." + NAME_253,  # over 253 characters
        "",
        ".",
        "..",
    ],
)
def test_malformed_hosts_match_nothing(host: str) -> None:
    assert normalise_host(host) is None
    assert not host_allowed(host, BFL)
    assert not host_allowed(host, ("*",))
    assert not host_allowed(host, (host,))  # not even a pattern spelled the same way


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("delivery-eu1.bfl.ai", "delivery-eu1.bfl.ai"),
        ("Delivery-US1.BFL.AI", "delivery-us1.bfl.ai"),  # uppercase
        ("delivery.eu2.bfl.ai.", "delivery.eu2.bfl.ai"),  # one trailing dot
        ("bücher.bfl.ai", "xn--bcher-kva.bfl.ai"),  # unicode that IDNA-encodes
        ("BÜCHER.bfl.ai", "xn--bcher-kva.bfl.ai"),
        ("XN--BCHER-KVA.bfl.ai", "xn--bcher-kva.bfl.ai"),
        ("faß.bfl.ai", "xn--fa-hia.bfl.ai"),  # IDNA 2008, as httpx encodes it (not "fass")
        ("x\u3002bfl\u3002ai", "x.bfl.ai"),  # IDNA's ideographic full stop is a dot (httpx sends x.bfl.ai)
        (f"{LABEL_63}.bfl.ai", f"{LABEL_63}.bfl.ai"),
        ("1.2.3.bfl.ai", "1.2.3.bfl.ai"),  # digits are fine in labels, just not as the last one
        ("x--y.bfl.ai", "x--y.bfl.ai"),
    ],
)
def test_valid_subdomains_match(host: str, canonical: str) -> None:
    assert normalise_host(host) == canonical
    assert host_allowed(host, BFL)
    assert host_allowed(host, ("*",))


def test_wildcards_match_whole_labels_and_only_subdomains() -> None:
    assert not host_allowed("bfl.ai", BFL)  # *.bfl.ai is subdomains only
    assert not host_allowed("bfl.ai.", BFL)
    assert host_allowed("bfl.ai", ("bfl.ai",)) and host_allowed("BFL.AI.", ("bfl.ai",))
    assert not host_allowed("evilbfl.ai", BFL)  # a suffix of a label is not a label
    assert not host_allowed("bfl.ai.evil.com", BFL)
    assert not host_allowed("x.bfl.ai.evil.com", BFL)
    assert not host_allowed("x.bfl.aix", BFL)
    assert host_allowed("a.b.c.bfl.ai", BFL)
    assert not host_allowed("cdn.images.example.com", ("images.example.com",))


def test_patterns_are_normalised_too() -> None:
    assert host_allowed("x.bfl.ai", ("*.BFL.AI.",))
    assert host_allowed("x.bfl.ai", (" *.bfl.ai ",))
    assert host_allowed("a.xn--bcher-kva.example", ("*.bücher.example",))
    assert host_allowed("a.bücher.example", ("*.xn--bcher-kva.example",))
    assert host_allowed("images.example.com", ("Images.Example.COM.",))


@pytest.mark.parametrize("pattern", ["*.", "*", "*.*.bfl.ai", "*.bfl.ai\\", "*bfl.ai", "x.*.ai", "*.a..ai", ""])
def test_malformed_patterns_match_nothing_but_star(pattern: str) -> None:
    assert host_allowed("x.bfl.ai", (pattern,)) == (pattern == "*")


def test_ip_literals() -> None:
    assert normalise_host("127.0.0.1") == "127.0.0.1"
    assert normalise_host("[::1]") == "::1" and normalise_host("::1") == "::1"
    assert normalise_host("[0:0:0:0:0:0:0:1]") == "::1"
    assert normalise_host("[2606:4700::6810:84E5]") == "2606:4700::6810:84e5"
    assert host_allowed("127.0.0.1", ("127.0.0.1",))
    assert host_allowed("[::1]", ("::1",)) and host_allowed("::1", ("[0::1]",))
    assert host_allowed("127.0.0.1", ("*",))
    assert not host_allowed("127.0.0.1", ("*.0.0.1",))  # wildcards are for names only
    assert not host_allowed("10.0.0.1", ("*.0.1",))


@pytest.mark.parametrize(
    "host",
    ["127.1", "0x7f000001", "0x7f.1", "2130706433", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", "x.bfl.0x1",
     "fe80::1%eth0", "[fe80::1%25eth0]", "[::1", "::1]", "[127.0.0.1]", ":::1", "[]"],
)
def test_numeric_and_malformed_addresses_refused(host: str) -> None:
    """A name ending in a number is read as an IPv4 address by browsers and some resolvers
    (`127.1`); only dotted quads and IPv6 literals count as addresses, and nothing else numeric."""
    assert normalise_host(host) is None
    assert not host_allowed(host, ("*",))


def test_bfl_delivery_hosts_are_its_own_storage_accounts() -> None:
    assert DIALECTS["bfl"].download_hosts == BFL_DELIVERY_HOSTS
    for host in ("delivery-eu1.bfl.ai", "delivery.eu2.bfl.ai", "bfldeliveryprodeu4.blob.core.windows.net",
                 "bfldeliveryprod.blob.core.windows.net"):
        assert host_allowed(host, BFL_DELIVERY_HOSTS), host
    for host in ("attacker.blob.core.windows.net", "bfldeliveryprodeu5.blob.core.windows.net",
                 "x.bfldeliveryprod.blob.core.windows.net", "blob.core.windows.net", "bfl.ai"):
        assert not host_allowed(host, BFL_DELIVERY_HOSTS), host

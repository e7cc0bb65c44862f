"""What the benchmarks share: the master key, a receiver's environment, a free loopback port."""

from __future__ import annotations

from pathlib import Path

from receiver.serving import bind

MASTER = "bench-master-key-0123456789abcdef0123456789"


def environment(tmp: Path, sim_url: str, public_url: str, **extra: str) -> dict[str, str]:
    """Settings for a receiver on loopback whose providers all point at the simulator."""
    return {
        "FLUXHOOK_PUBLIC_URL": public_url,
        "FLUXHOOK_ALLOW_HTTP": "1",
        "FLUXHOOK_SECRET_KEY": MASTER,
        "FLUXHOOK_DB": str(tmp / "bench.db"),
        "FLUXHOOK_RESULTS": str(tmp / "results"),
        "FLUXHOOK_BFL_URL": sim_url,
        "FLUXHOOK_DEERAPI_URL": sim_url,
        "FLUXHOOK_COMETAPI_URL": sim_url,
        "BFL_API_KEY": "bench",
        "FLUXHOOK_DOWNLOAD_HOSTS": "127.0.0.1",
        "FLUXHOOK_DOWNLOAD_ALLOW_PRIVATE": "1",
        "FLUXHOOK_DOWNLOAD_ALLOW_HTTP": "1",
        **extra,
    }


def free_port() -> int:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    return port


if __name__ == "__main__":
    from bench._cli import describe

    describe(__doc__)

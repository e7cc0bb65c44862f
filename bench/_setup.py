"""What the benchmarks share: the master key, a receiver's environment, a free port, a timed GET, a percentile."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import httpx

from receiver.serve.background import bind

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


async def median_get(client: httpx.AsyncClient, path: str, n: int) -> float:
    """The median of `n` timed GETs of `path` (seconds), each answered 200."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(path)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    """The `q`th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    return port


if __name__ == "__main__":
    from bench._cli import describe

    describe(__doc__)

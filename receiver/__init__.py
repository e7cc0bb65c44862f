"""fluxhook's receiver: callbacks, the ledger, downloads, the sweep, the API and the gallery."""

import sys

# httpx imports its command-line tool (and with it click, rich's console and pygments, about
# 50 ms) whenever those are installed, which they are here; fluxhook never runs it. A None entry
# makes that import fail fast, and httpx then defines a stub `main` instead (encode/httpx#3547).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

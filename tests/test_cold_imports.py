"""What building the app loads: only what a provider callback or /healthz needs. The rest (the API's
pydantic, the gallery's jinja2, Prometheus, httpx's HTTP core, cryptography, the PostgreSQL backend)
loads on first use. Checked in a fresh interpreter, by module names. (httpx's own command-line tool
loads with httpx when click is installed: fluxhook no longer edits sys.modules to keep it out.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LAZY = ("pydantic", "jinja2", "prometheus_client", "httpcore", "cryptography",
        "receiver.store.postgres", "receiver.web.api.jobs", "receiver.web.ui.pages", "receiver.web.ui.gallery",
        "receiver.web.ui.jobs", "receiver.web.ui.providers", "receiver.web.ui.login",
        "h11", "asyncpg")

PROBE = """
import json, os, sys
from receiver.web.app import create_app
from receiver.config.settings import Settings
create_app(Settings.from_env())
print(json.dumps(sorted(m for m, module in sys.modules.items()
                         if module is not None and m.split(".")[0] in {n.split(".")[0] for n in %r})))
"""


def test_building_the_app_loads_nothing_the_callback_path_does_not_need(tmp_path: Path) -> None:
    env = {"FLUXHOOK_SECRET_KEY": "k" * 40, "FLUXHOOK_DB": str(tmp_path / "l.db"),
           "FLUXHOOK_RESULTS": str(tmp_path / "results"), "FLUXHOOK_PUBLIC_URL": "https://hooks.example",
           "PATH": "/usr/bin:/bin"}
    ran = subprocess.run([sys.executable, "-c", PROBE % (LAZY,)], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    loaded = set(json.loads(ran.stdout))
    assert not loaded & set(LAZY), f"loaded when the app is built: {sorted(loaded & set(LAZY))}"

"""End to end behind TLS: a real `fluxhook serve` process behind Debian's nginx, configured by
deploy/nginx/fluxhook.conf (rendered with this test's ports, certificate and log paths), with a
certificate from a CA made here. The simulator calls back to the https:// public URL, trusting only
that CA.

nginx is required, never skipped: `.ci/run` installs it. Each nginx is started in the foreground with
its own prefix, config, pid and logs in tmp_path, on 127.0.0.1 and free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench._setup import free_port
from receiver.config.settings import Settings
from receiver.engine.jobs import callback_url, submit
from receiver.engine.runtime import Runtime
from receiver.serve.background import bind, serve_in_background
from submitter.simulator import Faults, Simulator
from submitter.status import Status
from tests.e2e.support import MASTER, WAIT, env_for, wait_for_status
from tests.e2e.test_forwarded import FORGED, echo_app

pytestmark = pytest.mark.anyio

RECIPE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "fluxhook.conf"
#: The address the test's own client connects to nginx from (all of 127/8 is loopback on Linux), so a
#: forwarded client is told apart from nginx's own connection to the receiver (from 127.0.0.1).
CLIENT_ADDRESS = "127.0.0.3"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail("nginx is not installed: these tests need Debian's nginx (`.ci/run` installs it:"
                    " apt-get install -y nginx)", pytrace=False)
    return found


# The certificate authority


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """Trusts this CA only (not the system's)."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_certs(directory: Path) -> Certs:
    """A CA (key + self-signed certificate) and a server certificate it signs for 127.0.0.1 / localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fluxhook test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certs(directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem")
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    # fullchain.pem as certbot writes it: the server certificate, then the chain.
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + certs.ca.read_bytes())
    certs.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


# nginx


def _replace(text: str, old: str, new: str) -> str:
    """`text` with every `old` replaced; the recipe must still contain it (else this test is stale)."""
    assert old in text, f"{RECIPE} no longer contains {old!r}: update tests/e2e/test_tls_proxy.py"
    return text.replace(old, new)


def render_recipe(*, https_port: int, http_port: int, upstream: int, certs: Certs, logs: Path, www: Path) -> str:
    """deploy/nginx/fluxhook.conf with this test's ports, certificate and paths; IPv6 listeners dropped."""
    text = RECIPE.read_text()
    text = re.sub(r"^\s*listen \[::\]:.*\n", "", text, flags=re.MULTILINE)
    for old, new in [
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"),
        ("/etc/letsencrypt/live/hooks.example.com/fullchain.pem", str(certs.cert)),
        ("/etc/letsencrypt/live/hooks.example.com/privkey.pem", str(certs.key)),
        ("/var/log/nginx/", f"{logs}/"),
        ("/var/www/certbot", str(www)),
        ("shared:fluxhook_tls:", f"shared:fluxhook_tls_{https_port}:"),
    ]:
        text = _replace(text, old, new)
    return text


@dataclass
class Nginx:
    url: str  # https://127.0.0.1:PORT
    http_url: str  # the plain-HTTP server (ACME challenge, redirect)
    logs: Path


@contextlib.asynccontextmanager
async def nginx(tmp_path: Path, upstream: int, certs: Certs) -> AsyncIterator[Nginx]:
    """nginx in the foreground, prefix tmp_path/nginx, the rendered recipe inside a minimal nginx.conf
    (what Debian's /etc/nginx/nginx.conf does with sites-enabled/)."""
    binary = nginx_binary()
    prefix = tmp_path / "nginx"
    logs, www = prefix / "logs", prefix / "www"
    for d in (logs, www, prefix / "temp"):
        d.mkdir(parents=True, exist_ok=True)
    https_port, http_port = free_port(), free_port()
    site = prefix / "fluxhook.conf"
    site.write_text(render_recipe(https_port=https_port, http_port=http_port, upstream=upstream, certs=certs,
                                  logs=logs, www=www))
    temp = prefix / "temp"
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {logs}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {logs}/default.access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
""")
    check = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, f"nginx -t refused the rendered recipe:\n{check.stderr}"
    process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"nginx exited during start-up: {process.stderr.read().decode()}"  # type: ignore[union-attr]
                                         f"{(logs / 'error.log').read_text()}")
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                    break
                await asyncio.sleep(0.05)
        yield Nginx(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", logs)
    finally:
        process.terminate()  # SIGTERM: fast shutdown
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def client(certs: Certs) -> httpx.AsyncClient:
    """Trusts the test CA, connects from CLIENT_ADDRESS."""
    ctx = certs.client_context()
    return httpx.AsyncClient(verify=ctx, transport=httpx.AsyncHTTPTransport(verify=ctx, local_address=CLIENT_ADDRESS),
                             timeout=WAIT)


def log_files(*directories: Path) -> Iterator[Path]:
    for directory in directories:
        yield from (p for p in sorted(directory.rglob("*")) if p.is_file() and p.suffix in {".log", ".out", ".err"})


# A real `fluxhook serve`


@contextlib.asynccontextmanager
async def fluxhook_serve(env: dict[str, str], port: int, out: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`fluxhook serve` on 127.0.0.1:`port`, stdout/stderr to `out`/receiver.{out,err}, at log level info."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "receiver.out", "wb") as stdout, open(out / "receiver.err", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "info"],
            env={**os.environ, **env}, stdout=stdout, stderr=stderr,
        )
    try:
        async with httpx.AsyncClient() as http, asyncio.timeout(WAIT):
            while True:
                assert process.poll() is None, f"receiver exited during start-up: {(out / 'receiver.err').read_text()}"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_callbacks_over_tls_through_nginx_verify_store_and_log_no_token(tmp_path: Path, certs: Certs) -> None:
    # The simulator's callbacks trust the test CA only; it closes only a client it made itself.
    sim_http = httpx.AsyncClient(verify=certs.client_context(), timeout=WAIT)
    sim = Simulator(http=sim_http, default_faults=Faults(runtime=0.05), callback_retries=(0.05, 0.1))
    port = free_port()
    outputs = tmp_path / "receiver"
    async with (
        sim_http,
        serve_in_background(sim.app) as sim_url,
        nginx(tmp_path, port, certs) as proxy,
    ):
        ops = "ops-token-0123456789"  # /healthz shows its counters to operators only
        env = env_for(tmp_path, sim_url, proxy.url) | {"FLUXHOOK_FORWARDED_ALLOW_IPS": "127.0.0.1",
                                                       "FLUXHOOK_METRICS_TOKEN": ops}
        del env["FLUXHOOK_ALLOW_HTTP"]  # the public URL is https
        settings = Settings.from_env(env)
        assert settings.public_url == proxy.url
        settings.results.mkdir(parents=True, exist_ok=True)
        async with fluxhook_serve(env, port, outputs), Runtime.open(settings) as rt, client(certs) as http:
            jobs = [await submit(rt, provider, "flux-dev", {"prompt": f"over tls {provider}"})
                    for provider in ("bfl", "deerapi", "cometapi")]
            tokens = [callback_url(proxy.url, MASTER.encode(), job.provider, job.id)[0].rsplit("/", 1)[1]
                      for job in jobs]
            for job in jobs:
                done = await wait_for_status(rt.store, job.id)
                assert done.status == Status.STORED, done
                assert done.callback_at is not None and done.polls == 0  # the callback did it, not the sweep
                (stored,) = sorted((settings.results / job.id).iterdir())
                assert stored.read_bytes().startswith(b"\x89PNG")
            await sim.drain()
            totals = sim.stats()["totals"]
            assert totals["callbacks_failed"] == 0 and totals["polls"] == 0 and totals["deliveries"] == 3
            health = (await http.get(f"{proxy.url}/healthz", headers={"authorization": f"Bearer {ops}"})).json()
            assert health["callbacks"]["accepted"] == 3
            assert (await http.get(f"{proxy.url}/metrics")).status_code == 403  # never through the proxy
            # Plain HTTP is redirected to https, path kept (and, again, not logged).
            redirect = await http.post(f"{proxy.http_url}/hooks/bfl/{jobs[0].id}/{tokens[0]}", content=b"{}")
            assert redirect.status_code == 301
            assert redirect.headers["location"].startswith(f"https://127.0.0.1/hooks/bfl/{jobs[0].id}/")
    await sim.aclose()

    logs = list(log_files(proxy.logs, outputs))
    assert {p.name for p in logs} >= {"fluxhook.access.log", "error.log", "receiver.out", "receiver.err"}
    access = (proxy.logs / "fluxhook.access.log").read_text()
    assert access.count('"POST" 20') >= 3, access  # the callbacks were logged, without their paths
    for path in logs:
        text = path.read_text(errors="replace")
        for token in tokens:
            assert token not in text, f"a callback token is in {path}"
        assert "/hooks/" not in text, f"a callback path is in {path}"


async def test_behind_nginx_a_trusted_proxy_gives_the_forwarded_client_and_https(
    tmp_path: Path, certs: Certs
) -> None:
    for allow, expected in [
        ("127.0.0.1", {"client": CLIENT_ADDRESS, "scheme": "https"}),  # nginx is trusted
        ("", {"client": "127.0.0.1", "scheme": "http"}),  # the default: nginx's headers are ignored
    ]:
        settings = Settings.from_env({"FLUXHOOK_FORWARDED_ALLOW_IPS": allow})
        sock = bind()
        async with (
            serve_in_background(echo_app(), sock, settings=settings),
            nginx(tmp_path / f"nginx-{allow or 'none'}", sock.getsockname()[1], certs) as proxy,
            client(certs) as http,
        ):
            plain = (await http.get(f"{proxy.url}/echo")).json()
            # nginx replaces what the client claims: forging through the proxy changes nothing either.
            forged = (await http.get(f"{proxy.url}/echo", headers=FORGED)).json()
            assert plain == forged == expected, allow


async def test_receiver_down_the_502_logs_no_token(tmp_path: Path, certs: Certs) -> None:
    """The error nginx logs when the receiver does not answer quotes the request line: the recipe keeps
    it out of the webhook routes' error log."""
    token = "tok-" + "x" * 40
    async with nginx(tmp_path, free_port(), certs) as proxy, client(certs) as http:
        response = await http.post(f"{proxy.url}/hooks/bfl/job-1/{token}", content=b"{}")
        assert response.status_code == 502
        assert (await http.get(f"{proxy.url}/healthz")).status_code == 502  # elsewhere, errors are logged
    error_log = (proxy.logs / "fluxhook.error.log").read_text()
    assert "/healthz" in error_log  # proof that the error would have been logged, with its path
    for path in log_files(proxy.logs):
        assert token not in path.read_text(errors="replace"), f"the token is in {path}"


async def test_the_api_and_its_event_stream_through_nginx(tmp_path: Path, certs: Certs) -> None:
    """The /v1 API over TLS through the recipe: an SSE client connected first sees the job's events as
    they happen (nginx buffers nothing), and the API key is in no log."""
    import json as _json

    sim_http = httpx.AsyncClient(verify=certs.client_context(), timeout=WAIT)
    sim = Simulator(http=sim_http, default_faults=Faults(runtime=0.05), callback_retries=(0.05, 0.1))
    port = free_port()
    outputs = tmp_path / "receiver"
    key = "api-key-" + "k" * 32
    async with (
        sim_http,
        serve_in_background(sim.app) as sim_url,
        nginx(tmp_path, port, certs) as proxy,
    ):
        env = env_for(tmp_path, sim_url, proxy.url) | {"FLUXHOOK_FORWARDED_ALLOW_IPS": "127.0.0.1",
                                                        "FLUXHOOK_API_KEYS": key, "FLUXHOOK_SSE_HEARTBEAT": "1"}
        del env["FLUXHOOK_ALLOW_HTTP"]
        auth = {"authorization": f"Bearer {key}"}
        async with fluxhook_serve(env, port, outputs), client(certs) as http:
            async with http.stream("GET", f"{proxy.url}/v1/events", headers=auth) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                assert await anext(lines) == "retry: 2000"  # the stream is flowing before any event
                created = await http.post(f"{proxy.url}/v1/jobs", headers=auth,
                                          json={"provider": "bfl", "model": "flux-dev", "params": {"prompt": "x"}})
                assert created.status_code == 201, created.text
                job_id = created.json()["id"]
                types: list[str] = []
                async with asyncio.timeout(WAIT):
                    async for line in lines:
                        if line.startswith("data: "):
                            envelope = _json.loads(line.removeprefix("data: "))
                            assert envelope["data"]["id"] == job_id
                            types.append(envelope["type"])
                            if envelope["type"] == "job.stored":
                                break
                assert types[-1] == "job.stored"
            waited = await http.get(f"{proxy.url}/v1/jobs/{job_id}?wait=5", headers=auth)
            assert waited.json()["status"] == "stored"
    await sim.aclose()
    for path in log_files(proxy.logs, outputs):
        assert key not in path.read_text(errors="replace"), f"the API key is in {path}"

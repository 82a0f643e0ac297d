"""The whole pipeline as real subprocesses on ephemeral ports: demo apps, health-checker, mux-router,
tls-terminator; driven by curl, openssl s_client, http.client and the websockets client."""
from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import subprocess
import time

import pytest
import trustme
import websockets

from frontgate import health_state
from tests.helpers import BIN, REPO, free_port, start_daemon, stop_daemon, wait_until


class Pipeline:
    """Ports, paths and processes of one running pipeline."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.tls_port, self.router_port, self.public_port = free_port(), free_port(), free_port()
        self.maps_ports = [free_port(), free_port()]
        self.coltrane_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.ca = trustme.CA()
        self.state_file = tmp_path / "state" / "health.json"

    def write_configs(self):
        cert = self.ca.issue_cert("maps.localhost", "*.coltrane.localhost", "coltrane.localhost", "nobody.localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.dir / "site.pem"))
        (self.dir / "site.pem").chmod(0o600)
        servers = ", ".join(f'"127.0.0.1:{p}"' for p in self.maps_ports)
        (self.dir / "mux-router.toml").write_text(f"""
[router]
state_file = "state/health.json"
state_stale_after = 5
trusted_sources = ["127.0.0.1/32"]
[listen.public]
address = "127.0.0.1:{self.public_port}"
[listen.from_terminator]
address = "127.0.0.1:{self.router_port}"
proxy_protocol = true
scheme = "https"
[timeouts]
connect = 2
server = 10
[[redirect]]
listener = "public"
source_not_in = ["trusted"]
to_scheme = "https"
code = 301
[[app]]
name = "maps"
hosts = ["maps.localhost"]
retries = 0
servers = [{servers}]
[[app]]
name = "coltrane"
hosts = ["coltrane.localhost", "*.coltrane.localhost"]
servers = ["127.0.0.1:{self.coltrane_port}"]
""")
        (self.dir / "tls-terminator.toml").write_text(f"""
[terminator]
listen = "127.0.0.1:{self.tls_port}"
forward_to = "127.0.0.1:{self.router_port}"
[[certificate]]
cert = "site.pem"
""")
        (self.dir / "health-checker.toml").write_text("""
[checker]
router_config = "mux-router.toml"
heartbeat = 1
[defaults]
type = "http"
interval = 0.5
timeout = 0.5
rise = 1
fall = 3
""")

    def start_backend(self, name: str, port: int):
        argv = [str(BIN / "python"), str(REPO / "scripts" / "demo_app.py"), "--name", name, "--port", str(port)]
        if name == "maps":
            argv += ["--websocket-path", "/socket"]
        self.procs[f"{name}:{port}"] = start_daemon(argv, wait_for=("127.0.0.1", port))

    def start(self):
        self.write_configs()
        for port in self.maps_ports:
            self.start_backend("maps", port)
        self.start_backend("coltrane", self.coltrane_port)
        self.procs["health-checker"] = start_daemon(
            ["health-checker", "--config", str(self.dir / "health-checker.toml")])
        self.procs["mux-router"] = start_daemon(
            ["mux-router", "--config", str(self.dir / "mux-router.toml")], wait_for=("127.0.0.1", self.router_port))
        self.procs["tls-terminator"] = start_daemon(
            ["tls-terminator", "--config", str(self.dir / "tls-terminator.toml")],
            wait_for=("127.0.0.1", self.tls_port))
        wait_until(lambda: self.state_file.exists(), what="health state file written")

    def stop(self) -> str:
        return "".join(f"--- {name}\n{stop_daemon(p)}" for name, p in self.procs.items())

    # ---- clients

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def https_get(self, host: str, path: str = "/", source: str = "127.0.0.1") -> tuple[int, dict, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=10, source_address=(source, 0),
                                           context=self.client_context())
        # http.client sends SNI from the host it connects to; connect by IP but ask for the name.
        conn.sock = self.client_context().wrap_socket(
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=10, source_address=(source, 0)),
            server_hostname=host)
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, dict(resp.getheaders()), body

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    try:
        p.start()
        yield p
    finally:
        output = p.stop()
    if any(word in output for word in ("Traceback", "Exception in callback")):
        pytest.fail(f"a daemon printed a traceback:\n{output}")


def test_curl_reaches_each_app_through_both_stages(pipeline):
    for host, app in (("maps.localhost", "maps"), ("coltrane.localhost", "coltrane"), ("x.coltrane.localhost", "coltrane")):
        r = pipeline.curl("--cacert", "/dev/null", "-k", "--resolve", f"{host}:{pipeline.tls_port}:127.0.0.1",
                          f"https://{host}:{pipeline.tls_port}/hello?x=1", "-w", "\n%{http_code}")
        assert r.returncode == 0, r.stderr
        body, _, status = r.stdout.rpartition("\n")
        assert status == "200" and app in body, r.stdout


def test_backend_sees_real_client_address_and_https(pipeline):
    # The client connects from 127.0.0.3; the terminator's own connection to the router comes from
    # 127.0.0.1, so only the PROXY v2 header can tell the router who the client was.
    status, _, body = pipeline.https_get("maps.localhost", "/whoami", source="127.0.0.3")
    assert status == 200
    assert "X-Forwarded-For: 127.0.0.3" in body and "X-Forwarded-Proto: https" in body, body


def test_openssl_s_client_gets_the_certificate_for_the_sni_name(pipeline):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{pipeline.tls_port}",
                        "-servername", "maps.localhost", "-brief", "-ign_eof"],
                       input="GET / HTTP/1.1\r\nHost: maps.localhost\r\nConnection: close\r\n\r\n",
                       capture_output=True, text=True, timeout=20)
    assert "Protocol version: TLSv1.3" in r.stderr, r.stderr
    assert "HTTP/1.1 200" in r.stdout and "maps" in r.stdout, r.stdout


def test_websocket_echo_through_both_stages(pipeline):
    async def talk():
        uri = f"wss://maps.localhost:{pipeline.tls_port}/socket"
        sock = socket.create_connection(("127.0.0.1", pipeline.tls_port))
        async with websockets.connect(uri, ssl=pipeline.client_context(), sock=sock,
                                      server_hostname="maps.localhost", open_timeout=10) as ws:
            replies = []
            for msg in ["hello", "x" * 100_000, "bye"]:
                await ws.send(msg)
                replies.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(b"\x00\x01binary")
            replies.append(await asyncio.wait_for(ws.recv(), 10))
            return replies
    assert asyncio.run(talk()) == ["hello", "x" * 100_000, "bye", b"\x00\x01binary"]


def test_plain_http_from_outside_is_redirected_and_local_is_served(pipeline):
    outside = pipeline.curl("--interface", "127.0.0.2", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                            "-H", "Host: maps.localhost", f"http://127.0.0.1:{pipeline.public_port}/a?b=1")
    assert outside.stdout == "301 https://maps.localhost/a?b=1", outside
    local = pipeline.curl("-w", "\n%{http_code}", "-H", "Host: maps.localhost",
                          f"http://127.0.0.1:{pipeline.public_port}/a?b=1")
    assert local.stdout.endswith("\n200") and "maps" in local.stdout


def test_unknown_host_is_404_and_malformed_request_is_400(pipeline):
    status, _, _ = pipeline.https_get("nobody.localhost")
    assert status == 404
    with socket.create_connection(("127.0.0.1", pipeline.public_port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")


def test_killed_backend_gives_502_then_is_skipped_once_marked_down(pipeline):
    dead_port = pipeline.maps_ports[1]
    key = f"maps/127.0.0.1:{dead_port}"
    stop_daemon(pipeline.procs.pop(f"maps:{dead_port}"))
    # retries = 0 for maps: until the checker notices (3 failures 0.5 s apart), round robin sends
    # every other request to the dead server.
    statuses = [pipeline.https_get("maps.localhost")[0] for _ in range(4)]
    assert sorted(statuses) == [200, 200, 502, 502], statuses
    wait_until(lambda: health_state.read(pipeline.state_file).servers[key].state == "down", timeout=10,
               what="checker marks the dead server down")
    time.sleep(1.0)   # the router follows the state file within a second
    assert [pipeline.https_get("maps.localhost")[0] for _ in range(6)] == [200] * 6
    # The last server goes too: all down is 503.
    live = pipeline.maps_ports[0]
    stop_daemon(pipeline.procs.pop(f"maps:{live}"))
    wait_until(lambda: health_state.read(pipeline.state_file).servers[f"maps/127.0.0.1:{live}"].state == "down",
               timeout=10, what="checker marks the last server down")
    time.sleep(1.0)
    assert pipeline.https_get("maps.localhost")[0] == 503

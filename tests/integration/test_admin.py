"""The admin listener of real mux-router and tls-terminator processes: /metrics counts what the
test did, /stats.json follows the health state, two workers answer for each other, and a
non-loopback admin address is refused at start."""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest
import trustme
from cryptography import x509
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from frontgate import health_state
from tests.helpers import BIN, REPO, daemon_output, free_port, start_daemon, stop_daemon, wait_until
from tests.pipeline import RecordingBackend, check_no_tracebacks

TIMEOUT = 10


def admin_get(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def scrape(port: int, prefix: str) -> dict[tuple, float]:
    """{(sample name, (label, value) pairs sorted): value} of a /metrics answer."""
    status, headers, body = admin_get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith(prefix)
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def stats_json(port: int) -> dict:
    status, headers, body = admin_get(port, "/stats.json")
    assert status == 200 and headers["content-type"] == "application/json"
    return json.loads(body)


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def http_get(port: int, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------- the router

class RouterSetup:
    def __init__(self, tmp_path, workers: int = 1):
        self.dir = tmp_path
        self.backend = RecordingBackend().start()
        self.dead_port = free_port()                    # nothing listens there: connects are refused
        self.port, self.admin_port = free_port(), free_port()
        self.state_file = tmp_path / "state" / "health.json"
        self.state_file.parent.mkdir()
        self.config = tmp_path / "mux-router.toml"
        self.config.write_text(f"""
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "state/health.json"
state_stale_after = 30
[listen.public]
address = "127.0.0.1:{self.port}"
[admin]
address = "127.0.0.1:{self.admin_port}"
refresh = 2
[[app]]
name = "rec"
hosts = ["rec.localhost"]
retries = 0
servers = ["127.0.0.1:{self.backend.port}"]
[[app]]
name = "dead"
hosts = ["dead.localhost"]
retries = 1
redispatch = false
passive_fall = 0
servers = ["127.0.0.1:{self.dead_port}"]
[[app]]
name = "ws"
hosts = ["ws.localhost"]
retries = 0
servers = ["127.0.0.1:{self.backend.port}"]
""")
        self.procs: list[subprocess.Popen] = []

    @property
    def rec_server(self) -> str:
        return f"127.0.0.1:{self.backend.port}"

    @property
    def dead_server(self) -> str:
        return f"127.0.0.1:{self.dead_port}"

    def start_router(self) -> subprocess.Popen:
        proc = start_daemon(["mux-router", "--config", str(self.config)], wait_for=("127.0.0.1", self.admin_port))
        self.procs.append(proc)
        # Listening: the process has also written (or is about to write) its first snapshot.
        wait_until(lambda: (self.dir / "state" / "stats" / f"mux-router-{proc.pid}.json").exists(),
                   what="the router's first stats snapshot")
        return proc

    def write_state(self, states: dict[str, tuple[str, str]]) -> None:
        now = time.time()
        health_state.write_atomic(self.state_file, health_state.HealthState(
            generation=1, written_at=now, checker_pid=os.getpid(),
            servers={key: health_state.ServerState(state=state, since=now - 65,
                                                   last_check={"ok": state == "up", "took_ms": 1.0, "detail": detail})
                     for key, (state, detail) in states.items()}))

    def stop(self) -> str:
        out = "".join(stop_daemon(p) for p in self.procs)
        self.backend.stop()
        return out


@pytest.fixture
def router(tmp_path):
    setup = RouterSetup(tmp_path)
    try:
        setup.start_router()
        yield setup
    finally:
        output = setup.stop()
    check_no_tracebacks(output)


def test_router_metrics_count_requests_errors_and_bytes(router):
    for _ in range(3):
        assert http_get(router.port, "rec.localhost") == 200
    assert http_get(router.port, "nobody.localhost") == 404
    assert http_get(router.port, "dead.localhost") == 502          # connect refused, retried once, refused

    m = scrape(router.admin_port, "frontgate_router_")
    req = "frontgate_router_requests_total"
    assert m[(req, (("app", "rec"), ("code", "2xx"), ("server", router.rec_server)))] == 3
    assert m[(req, (("app", "-"), ("code", "4xx"), ("server", "-")))] == 1
    assert m[(req, (("app", "dead"), ("code", "5xx"), ("server", "-")))] == 1
    assert m[("frontgate_router_backend_connect_errors_total",
              (("app", "dead"), ("reason", "refused"), ("server", router.dead_server)))] == 2
    assert m[("frontgate_router_retries_total", (("app", "dead"),))] == 1
    # Bytes: what the client sent (its request heads) and received (status line, headers, body).
    assert m[("frontgate_router_bytes_in_total", (("app", "rec"),))] >= 3 * len(b"GET / HTTP/1.1\r\nHost: rec.localhost\r\n\r\n")
    assert m[("frontgate_router_bytes_out_total", (("app", "rec"),))] >= 3 * len(b"recorded\n")
    assert m[("frontgate_router_active_tunnels", ())] == 0
    assert m[("frontgate_router_queue_length", (("app", "rec"),))] == 0
    assert m[("frontgate_router_server_up", (("app", "rec"), ("server", router.rec_server)))] == 1
    assert m[("frontgate_router_state_file_age_seconds", ())] == -1          # no state file yet
    pid = str(router.procs[0].pid)
    assert m[("frontgate_router_process_requests_total", (("pid", pid),))] == 5
    # The scrapes themselves are not requests through the router.
    assert scrape(router.admin_port, "frontgate_router_")[(req, (("app", "rec"), ("code", "2xx"),
                                                                 ("server", router.rec_server)))] == 3


def test_router_stats_json_follows_the_health_state(router):
    assert http_get(router.port, "rec.localhost") == 200
    data = stats_json(router.admin_port)
    assert data["stage"] == "mux-router" and data["refresh"] == 2
    dead = next(a for a in data["apps"] if a["name"] == "dead")["servers"][0]
    assert dead["status"] == "UP" and dead["why"] == "no fresh health state"

    router.write_state({f"dead/{router.dead_server}": ("down", "connect: Connection refused"),
                        f"rec/{router.rec_server}": ("up", "HTTP 200")})

    def dead_is_down():
        d = stats_json(router.admin_port)
        return d if next(a for a in d["apps"] if a["name"] == "dead")["servers"][0]["status"] == "DOWN" else None
    data = wait_until(dead_is_down, what="the dead server DOWN on /stats.json")
    apps = {a["name"]: a for a in data["apps"]}
    dead = apps["dead"]["servers"][0]
    assert dead["why"] == "connect: Connection refused" and data["now"] - dead["since"] >= 65
    rec = apps["rec"]["servers"][0]
    assert rec["status"] == "UP" and rec["why"] == "HTTP 200" and rec["requests"] == 1 and rec["codes"]["2xx"] == 1
    assert apps["dead"]["totals"]["up"] == 0 and apps["rec"]["totals"]["up"] == 1
    assert data["state_fresh"] and 0 <= data["state_file_age"] < 10

    m = scrape(router.admin_port, "frontgate_router_")
    assert m[("frontgate_router_server_up", (("app", "dead"), ("server", router.dead_server)))] == 0
    assert 0 <= m[("frontgate_router_state_file_age_seconds", ())] < 10
    # A down server gets no traffic: the router answers 503 itself.
    assert http_get(router.port, "dead.localhost") == 503

    page = admin_get(router.admin_port, "/stats")
    assert page[0] == 200 and page[1]["content-type"] == "text/html; charset=utf-8"
    assert b'http-equiv="refresh" content="2"' in page[2] and b"<b>DOWN</b>" in page[2]


def test_router_counts_open_websocket_tunnels(router):
    """A 101 from the backend makes a tunnel: the gauge is 1 while it is open, 0 after."""
    received = threading.Event()

    def echo(ws):
        for message in ws:
            ws.send(message)
            received.set()

    server = ws_serve(echo, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ws_port = server.socket.getsockname()[1]
    config = router.config.read_text().replace(f'name = "ws"\nhosts = ["ws.localhost"]\nretries = 0\n'
                                               f'servers = ["127.0.0.1:{router.backend.port}"]',
                                               f'name = "ws"\nhosts = ["ws.localhost"]\nretries = 0\n'
                                               f'servers = ["127.0.0.1:{ws_port}"]')
    router.config.write_text(config)
    router.procs[0].send_signal(1)              # SIGHUP: reload with the echo server behind "ws"
    wait_until(lambda: "reloaded" in daemon_output(router.procs[0]), what="reload")
    tunnel_gauge = ("frontgate_router_active_tunnels", ())
    try:
        sock = socket.create_connection(("127.0.0.1", router.port), timeout=TIMEOUT)
        with ws_connect(f"ws://ws.localhost:{router.port}/socket", sock=sock, open_timeout=TIMEOUT) as ws:
            ws.send("hello")
            assert ws.recv(timeout=TIMEOUT) == "hello"
            assert scrape(router.admin_port, "frontgate_router_")[tunnel_gauge] == 1
        wait_until(lambda: scrape(router.admin_port, "frontgate_router_")[tunnel_gauge] == 0, what="tunnel closed")
        m = scrape(router.admin_port, "frontgate_router_")
        assert m[("frontgate_router_requests_total", (("app", "ws"), ("code", "1xx"), ("server", f"127.0.0.1:{ws_port}")))] == 1
        assert m[("frontgate_router_bytes_in_total", (("app", "ws"),))] > len("hello")
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


def test_admin_http_edges(router):
    status, headers, body = admin_get(router.admin_port, "/nope")
    assert status == 404 and headers["connection"] == "close"
    status, headers, body = admin_get(router.admin_port, "/metrics", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = admin_get(router.admin_port, "/stats", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 100
    assert raw_exchange(router.admin_port, b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431 ")
    assert raw_exchange(router.admin_port, b"\x16\x03\x01\x00\x05hello\r\n").startswith(b"HTTP/1.1 400 ")
    # Each answer closes the connection, and a client that sends nothing is let go.
    with socket.create_connection(("127.0.0.1", router.admin_port), timeout=TIMEOUT) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.count(b"HTTP/1.1 200 OK") == 1


def test_two_router_workers_answer_for_each_other(tmp_path):
    setup = RouterSetup(tmp_path)
    try:
        first, second = setup.start_router(), setup.start_router()
        n = 20
        for _ in range(n):                   # a new connection each: the kernel spreads them
            assert http_get(setup.port, "rec.localhost") == 200
        key = ("frontgate_router_requests_total", (("app", "rec"), ("code", "2xx"), ("server", setup.rec_server)))
        # Snapshots are written every second. Once both files hold all n between them, every answer
        # (own live counters + the other's snapshot) shows all n.
        def snapshots_total():
            total = 0
            for proc in (first, second):
                try:
                    doc = json.loads((tmp_path / "state" / "stats" / f"mux-router-{proc.pid}.json").read_text())
                except (OSError, ValueError):
                    return False
                total += sum(row[-1] for row in doc["values"]["requests_total"])
            return total == n
        wait_until(snapshots_total, what="both snapshots up to date")
        answered_by = set()
        for _ in range(30):
            data = stats_json(setup.admin_port)
            answered_by.add(data["pid"])
            assert data["apps"][0]["totals"]["codes"]["2xx"] == n
            assert sorted(p["pid"] for p in data["processes"]) == sorted([first.pid, second.pid])
            assert sum(p["requests"] for p in data["processes"]) == n
            m = scrape(setup.admin_port, "frontgate_router_")
            assert m[key] == n
            assert {dict(labels)["pid"] for (name, labels) in m if name == "frontgate_router_process_requests_total"} \
                == {str(first.pid), str(second.pid)}
        assert answered_by == {first.pid, second.pid}, "the kernel sent every scrape to one process"
        # A stopped worker removes its snapshot; the other then answers for itself alone.
        second.terminate()
        second.wait(TIMEOUT)
        assert not (tmp_path / "state" / "stats" / f"mux-router-{second.pid}.json").exists()
        data = stats_json(setup.admin_port)
        assert [p["pid"] for p in data["processes"]] == [first.pid]
    finally:
        output = setup.stop()
    check_no_tracebacks(output)


# --------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("daemon", ["mux-router", "tls-terminator"])
def test_non_loopback_admin_address_is_refused_at_start(tmp_path, daemon):
    path = tmp_path / f"{daemon}.toml"
    if daemon == "mux-router":
        path.write_text('[listen.public]\naddress = "127.0.0.1:1"\n[[app]]\nname = "a"\nhosts = ["a.localhost"]\n'
                        'servers = ["127.0.0.1:2"]\n[admin]\naddress = "0.0.0.0:8404"\n')
    else:
        trustme.CA().issue_cert("a.localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "c.pem"))
        (tmp_path / "c.pem").chmod(0o600)
        path.write_text('[terminator]\nlisten = "127.0.0.1:1"\nforward_to = "127.0.0.1:2"\n[[certificate]]\n'
                        'cert = "c.pem"\n[admin]\naddress = "0.0.0.0:8405"\n')
    result = subprocess.run([str(BIN / daemon), "--config", str(path)], capture_output=True, text=True,
                            timeout=30, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {path}: admin.address: 0.0.0.0:{8404 if daemon == 'mux-router' else 8405}: "
                                     "must be a loopback address (127.0.0.0/8 or [::1]); the admin listener has no "
                                     "authentication")


# --------------------------------------------------------------------------- the terminator

@pytest.fixture
def terminator(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("maps.localhost", "*.coltrane.localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    (tmp_path / "site.pem").chmod(0o600)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    backend = RecordingBackend().start()
    router_port, tls_port, admin_port = free_port(), free_port(), free_port()
    (tmp_path / "mux-router.toml").write_text(f"""
[router]
access_log_file = "-"
[listen.from_terminator]
address = "127.0.0.1:{router_port}"
proxy_protocol = true
scheme = "https"
[[app]]
name = "maps"
hosts = ["maps.localhost"]
servers = ["127.0.0.1:{backend.port}"]
""")
    (tmp_path / "tls-terminator.toml").write_text(f"""
[terminator]
listen = "127.0.0.1:{tls_port}"
forward_to = "127.0.0.1:{router_port}"
handshake_timeout = 1
[admin]
address = "127.0.0.1:{admin_port}"
stats_dir = "stats"
[[certificate]]
cert = "site.pem"
""")
    procs = []
    try:
        procs.append(start_daemon(["mux-router", "--config", str(tmp_path / "mux-router.toml")],
                                  wait_for=("127.0.0.1", router_port)))
        procs.append(start_daemon(["tls-terminator", "--config", str(tmp_path / "tls-terminator.toml")],
                                  wait_for=("127.0.0.1", admin_port)))
        yield {"dir": tmp_path, "ca": ca, "tls_port": tls_port, "admin_port": admin_port, "proc": procs[-1]}
    finally:
        output = "".join(stop_daemon(p) for p in reversed(procs))
        backend.stop()
    check_no_tracebacks(output)


def _hello_bytes(min_version, max_version, ciphers=None) -> bytes:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(min_version)
    ctx.set_max_proto_version(max_version)
    if ciphers:
        ctx.set_cipher_list(ciphers)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(b"maps.localhost")
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


def test_terminator_metrics(terminator):
    t = terminator
    ctx = ssl.create_default_context()
    t["ca"].configure_trust(ctx)
    for _ in range(2):
        conn = http.client.HTTPSConnection("127.0.0.1", t["tls_port"], timeout=TIMEOUT, context=ctx)
        conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", t["tls_port"]), timeout=TIMEOUT),
                                    server_hostname="maps.localhost")
        conn.request("GET", "/", headers={"Host": "maps.localhost"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"recorded\n"
        conn.close()
    # A TLS 1.0-only client, garbage, plain HTTP, and a client that says nothing (handshake_timeout 1 s).
    for data in (_hello_bytes(SSL.TLS1_VERSION, SSL.TLS1_VERSION, b"DEFAULT:@SECLEVEL=0"),
                 b"this is not a client hello\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: maps.localhost\r\n\r\n"):
        raw_exchange(t["tls_port"], data)
    with socket.create_connection(("127.0.0.1", t["tls_port"]), timeout=TIMEOUT) as silent:
        assert silent.recv(100) == b""          # closed by the terminator after handshake_timeout

    fail = "frontgate_terminator_handshake_failures_total"

    def settled():
        m = scrape(t["admin_port"], "frontgate_terminator_")
        return m if m.get((fail, (("reason", "timeout"),))) == 1 else None
    m = wait_until(settled, what="the handshake timeout counted")
    assert m[("frontgate_terminator_handshakes_total", (("version", "TLSv1.3"),))] == 2
    assert m[(fail, (("reason", "protocol_version"),))] == 1
    assert m[(fail, (("reason", "bad_client_hello"),))] == 1
    assert m[(fail, (("reason", "http_request"),))] == 1
    assert m[("frontgate_terminator_connections_total", ())] == 6
    assert m[("frontgate_terminator_active_connections", ())] == 0
    assert m[("frontgate_terminator_bytes_in_total", ())] > 1000 and m[("frontgate_terminator_bytes_out_total", ())] > 1000
    # The certificate's notAfter, to the second.
    leaf = x509.load_pem_x509_certificate((t["dir"] / "site.pem").read_bytes())
    expiry = [(labels, v) for (name, labels), v in m.items()
              if name == "frontgate_terminator_certificate_expiry_timestamp_seconds"]
    assert len(expiry) == 1
    labels, value = expiry[0]
    assert dict(labels) == {"file": str(t["dir"] / "site.pem"), "names": "maps.localhost,*.coltrane.localhost"}
    assert value == leaf.not_valid_after_utc.timestamp()

    data = stats_json(t["admin_port"])
    assert data["stage"] == "tls-terminator" and data["handshakes"] == {"TLSv1.3": 2}
    assert data["failures"] == {"bad_client_hello": 1, "http_request": 1, "protocol_version": 1, "timeout": 1}
    assert data["certificates"][0]["names"] == ["maps.localhost", "*.coltrane.localhost"]
    status, headers, page = admin_get(t["admin_port"], "/stats")
    assert status == 200 and b"protocol_version" in page and b"maps.localhost, *.coltrane.localhost" in page
    # Its snapshot is where the config says, and goes away with the process.
    snapshot = t["dir"] / "stats" / f"tls-terminator-{t['proc'].pid}.json"
    assert snapshot.exists()
    t["proc"].terminate()               # the fixture collects its output
    t["proc"].wait(TIMEOUT)
    assert not snapshot.exists()

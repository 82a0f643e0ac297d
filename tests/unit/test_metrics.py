"""The pure parts of the admin listener: counters, snapshot merge, Prometheus text, the request
parser, the handshake failure classifier, the stats page."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import trustme
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families

from frontgate.config import ConfigError, load_router_config, load_terminator_config
from frontgate.admin_http import AdminRequestError, http_response, parse_admin_request
from frontgate.metrics import (Family, RateMeter, decode_values, encode_values, merge, merge_rates, read_snapshots,
                               render_prometheus, snapshot_doc)
from frontgate.stats_page import DOWN_COLOUR, UP_COLOUR, render
from mux_router.stats import FAMILIES as ROUTER_FAMILIES, RouterStats, code_class
from tls_terminator.stats import TerminatorStats, handshake_failure_reason, names_label

# --------------------------------------------------------------------------- counters


def test_router_stats_count_requests_by_app_server_and_class():
    s = RouterStats()
    s.request_done("maps", "127.0.0.1:3000", 200, 100, 1000)
    s.request_done("maps", "127.0.0.1:3000", 204, 50, 10)
    s.request_done("maps", "-", 503, 80, 200)
    s.request_done("<redirect>", "", 301, 70, 150)
    s.request_done("-", "-", 400, 0, 90)
    s.request_done("maps", "127.0.0.1:3000", 0, 10, 0)      # client went away before any answer
    assert s.requests == {("maps", "127.0.0.1:3000", "2xx"): 2, ("maps", "-", "5xx"): 1,
                          ("-", "-", "3xx"): 1, ("-", "-", "4xx"): 1, ("maps", "127.0.0.1:3000", "other"): 1}
    assert s.bytes_in == {"maps": 240, "-": 70} and s.bytes_out == {"maps": 1210, "-": 240}
    s.connect_error("maps", "127.0.0.1:3001", ConnectionRefusedError())
    s.connect_error("maps", "127.0.0.1:3001", TimeoutError())
    s.connect_error("maps", "127.0.0.1:3001", OSError(113, "No route to host"))
    s.retry("maps")
    s.retry("maps")
    s.tunnels += 1
    v = s.values()
    assert v["backend_connect_errors_total"] == {("maps", "127.0.0.1:3001", r): 1 for r in ("refused", "timeout", "other")}
    assert v["retries_total"] == {("maps",): 2} and v["active_tunnels"] == {(): 1}
    assert [code_class(x) for x in (101, 200, 399, 404, 599, 0, 600)] == ["1xx", "2xx", "3xx", "4xx", "5xx",
                                                                            "other", "other"]


class _Conn:
    def __init__(self, i, o):
        self.bytes_in, self.bytes_out = i, o


def test_terminator_stats_bytes_of_open_and_closed_connections():
    s = TerminatorStats()
    s.connections = 3
    s.handshake_ok("TLSv1.3")
    s.handshake_ok("TLSv1.3")
    s.handshake_ok(None)
    s.handshake_failed("timeout")
    s.connection_done(_Conn(100, 1000))
    v = s.values([_Conn(5, 50), _Conn(1, 2)])
    assert v["bytes_in_total"] == {(): 106} and v["bytes_out_total"] == {(): 1052}
    assert v["active_connections"] == {(): 2} and v["connections_total"] == {(): 3}
    assert v["handshakes_total"] == {("TLSv1.3",): 2, ("unknown",): 1}
    assert v["handshake_failures_total"] == {("timeout",): 1}
    assert names_label(["a.example"] * 100).endswith("...") and len(names_label(["a.example"] * 100)) == 200
    assert names_label([]) == "-"


# --------------------------------------------------------------------------- snapshots and merge

FAMS = (Family("requests_total", "counter", "h", ("app",)), Family("active", "gauge", "h"),
        Family("up", "gauge", "h", ("server",), merge="own"))


def test_merge_sums_counters_and_gauges_but_keeps_own_values_of_own_families():
    own = {"requests_total": {("a",): 2}, "active": {(): 1}, "up": {("s1",): 1}}
    other = {"requests_total": {("a",): 3, ("b",): 1}, "active": {(): 4}, "up": {("s1",): 0},
             "unknown": {(): 9}}
    merged = merge(FAMS, own, [other, {"requests_total": {("a", "extra-label"): 5}}])
    assert merged == {"requests_total": {("a",): 5, ("b",): 1}, "active": {(): 5}, "up": {("s1",): 1}}
    assert merge_rates({"requests_total": {("a",): 1.5}}, [{"requests_total": {("a",): 0.5}}]) == \
        {"requests_total": {("a",): 2.0}}


def test_values_round_trip_through_json():
    values = {"requests_total": {("a", "b"): 3, ("c", "d"): 1.5}, "g": {(): 7}}
    assert decode_values(json.loads(json.dumps(encode_values(values)))) == values
    assert decode_values({"x": [[1, 2], ["ok", True], "junk", ["fine", 3]], "y": "junk"}) == {"x": {("fine",): 3}}
    assert decode_values(["not", "a", "dict"]) == {}


def _write(directory, stage, pid, written_at, admin="127.0.0.1:1", values=None, name=None):
    doc = snapshot_doc(stage, admin, pid, written_at - 10, written_at, values or {"requests_total": {("a",): pid}}, {})
    (directory / (name or f"{stage}-{pid}.json")).write_text(json.dumps(doc))


def test_read_snapshots_ignores_dead_stale_foreign_and_own(tmp_path):
    now = time.time()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    alive_pid = os.getppid()          # the test runner's parent: certainly alive
    _write(tmp_path, "mux-router", alive_pid, now - 1)                      # taken
    _write(tmp_path, "mux-router", dead_pid, now - 1)                       # its process is gone
    _write(tmp_path, "mux-router", os.getpid(), now - 1)                    # our own: live values instead
    _write(tmp_path, "tls-terminator", alive_pid, now - 1)                  # another stage
    _write(tmp_path, "mux-router", 1, now - 30)                             # stale (pid 1 lives)
    _write(tmp_path, "mux-router", 1, now - 1, admin="127.0.0.1:2", name="mux-router-1.json.bak")   # not a snapshot name
    (tmp_path / "mux-router-7.json").write_text("{not json")
    found = read_snapshots(tmp_path, "mux-router", "127.0.0.1:1", os.getpid(), now)
    assert [s["pid"] for s in found] == [alive_pid]
    assert found[0]["values"] == {"requests_total": {("a",): alive_pid}}
    # Another listener's workers (another deployment sharing the directory) are not ours.
    assert read_snapshots(tmp_path, "mux-router", "127.0.0.1:9", os.getpid(), now) == []
    assert read_snapshots(tmp_path / "missing", "mux-router", "127.0.0.1:1", os.getpid(), now) == []


def test_rate_meter():
    meter = RateMeter(window=3)
    assert meter.rates() == {}
    for t, n in ((0, 0), (1, 10), (2, 20), (3, 30), (4, 70)):
        meter.sample(t, {"requests_total": {("a",): n}})
    # The window holds the last 4 samples: (70 - 10) / (4 - 1)
    assert meter.rates() == {"requests_total": {("a",): 20.0}}


# --------------------------------------------------------------------------- Prometheus text

def test_prometheus_text_has_the_families_labels_and_values():
    values = {"requests_total": {("maps", "127.0.0.1:3000", "2xx"): 5, ("-", "-", "4xx"): 1},
              "server_up": {("maps", "127.0.0.1:3000"): 1, ("maps", 'we"ird\\name\n'): 0},
              "state_file_age_seconds": {(): 1.5}, "active_tunnels": {(): 0}}
    text = render_prometheus("frontgate_router_", ROUTER_FAMILIES, values).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["frontgate_router_requests"].type == "counter"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["frontgate_router_requests"].samples}
    assert samples[("frontgate_router_requests_total",
                    (("app", "maps"), ("code", "2xx"), ("server", "127.0.0.1:3000")))] == 5
    up = {s.labels["server"]: s.value for s in families["frontgate_router_server_up"].samples}
    assert up == {"127.0.0.1:3000": 1, 'we"ird\\name\n': 0}          # escaped and parsed back
    assert families["frontgate_router_state_file_age_seconds"].samples[0].value == 1.5
    # Every family is described, even with no samples yet.
    for fam in ROUTER_FAMILIES:
        assert "frontgate_router_" + fam.name.removesuffix("_total") in families


# --------------------------------------------------------------------------- the admin request parser

@pytest.mark.parametrize("data, expected", [
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/metrics")),
    (b"HEAD /stats?x=1 HTTP/1.0\r\n\r\n", ("HEAD", "/stats")),
    (b"GET /stats.json HTTP/1.1\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\nleftover", ("GET", "/stats.json")),
    (b"GET /metr", None),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", None),
    (b"", None),
])
def test_admin_request_parser(data, expected):
    assert parse_admin_request(data) == expected


@pytest.mark.parametrize("data, status", [
    (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
    (b"DELETE / HTTP/1.1\r\n\r\n", 405),
    (b"GET metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    (b"GET /x HTTP/2.0\r\n", 400),                       # known bad as soon as the line is in
    (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 9000, 431),
    (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 8200 + b"\r\n\r\n", 431),
])
def test_admin_request_parser_errors(data, status):
    with pytest.raises(AdminRequestError) as e:
        parse_admin_request(data)
    assert e.value.status == status


def test_http_response():
    r = http_response(200, "text/plain", b"hello")
    assert r.startswith(b"HTTP/1.1 200 OK\r\n") and r.endswith(b"\r\n\r\nhello")
    assert b"Content-Length: 5\r\n" in r and b"Connection: close\r\n" in r
    head = http_response(200, "text/plain", b"hello", head_only=True)
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 5" in head
    assert b"Allow: GET, HEAD" in http_response(405, "text/plain", b"")


# --------------------------------------------------------------------------- handshake failure reasons

@pytest.mark.parametrize("reason, label", [
    ("no shared cipher", "no_shared_cipher"),
    ("unsupported protocol", "protocol_version"),
    ("tlsv1 alert protocol version", "protocol_version"),
    ("http request", "http_request"),
    ("wrong version number", "bad_client_hello"),
    ("unexpected message", "bad_client_hello"),
    ("sslv3 alert certificate unknown", "client_alert"),
    ("tlsv1 alert unknown ca", "client_alert"),
    ("peer did not return a certificate", "client_certificate"),
    ("something new in OpenSSL 4", "other"),
])
def test_handshake_failure_reason_from_openssl_reason(reason, label):
    assert handshake_failure_reason(SSL.Error([("SSL routines", "", reason)])) == label


def test_handshake_failure_reason_of_syscall_errors():
    assert handshake_failure_reason(SSL.SysCallError(-1, "Unexpected EOF")) == "reset"
    assert handshake_failure_reason(SSL.Error()) == "other"


@pytest.fixture(scope="module")
def server_pem(tmp_path_factory):
    path = tmp_path_factory.mktemp("cert") / "site.pem"
    trustme.CA().issue_cert("a.test").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


def _server(pem):
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    ctx.use_certificate_chain_file(pem)
    ctx.use_privatekey_file(pem)
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    return conn


def _client_hello(min_version=None, max_version=None, ciphers=None) -> bytes:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if min_version is not None:
        ctx.set_min_proto_version(min_version)
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if ciphers:
        ctx.set_cipher_list(ciphers)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


@pytest.mark.parametrize("name, client_bytes, label", [
    ("tls1.0 only", lambda: _client_hello(SSL.TLS1_VERSION, SSL.TLS1_VERSION, b"DEFAULT:@SECLEVEL=0"),
     "protocol_version"),
    ("no common cipher", lambda: _client_hello(max_version=SSL.TLS1_2_VERSION, ciphers=b"AES128-SHA"),
     "no_shared_cipher"),
    ("plain http", lambda: b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "http_request"),
    ("garbage", lambda: b"this is not TLS at all\r\n\r\n", "bad_client_hello"),
    ("garbage handshake record", lambda: b"\x16\x03\x01\x00\x05hello", "bad_client_hello"),
])
def test_handshake_failure_reason_of_real_openssl_failures(server_pem, name, client_bytes, label):
    server = _server(server_pem)
    server.bio_write(client_bytes())
    with pytest.raises(SSL.Error) as e:
        server.do_handshake()
    assert handshake_failure_reason(e.value) == label, (name, e.value)


# --------------------------------------------------------------------------- the stats page

def _router_data(**over):
    server = lambda name, status, **kw: {                                                   # noqa: E731
        "name": name, "status": status, "since": 1000.0, "why": "HTTP 200", "weight": 1, "active": 2,
        "maxconn": 0, "requests": 12, "codes": {"1xx": 0, "2xx": 10, "3xx": 0, "4xx": 1, "5xx": 1},
        "connect_errors": 0, "rate": 1.5, **kw}
    data = {
        "stage": "mux-router", "version": "0.1.0", "now": 1060.0, "refresh": 7,
        "processes": [{"pid": 11, "started": 900.0, "uptime": 160.0, "connections": 3, "requests": 12}],
        "connections": 3, "tunnels": 0, "requests": 13, "rate": 1.5, "state_file": "/s/health.json",
        "state_file_age": 0.4, "state_fresh": True,
        "apps": [{"name": "<maps&co>", "queue": 0, "retries": 1, "bytes_in": 1000, "bytes_out": 5 * 1024 * 1024,
                  "servers": [server("127.0.0.1:3000", "UP"),
                              server("127.0.0.1:3001", "DOWN", why="<script>alert(1)</script> HTTP 500",
                                     requests=0, codes={})],
                  "router_answers": {"requests": 1, "codes": {"5xx": 1}, "rate": 0},
                  "totals": {"active": 2, "requests": 13, "codes": {"2xx": 10, "4xx": 1, "5xx": 2},
                             "connect_errors": 3, "rate": 1.5, "up": 1, "servers": 2}}],
        "unrouted": {"requests": 4, "codes": {"4xx": 4}},
    }
    data.update(over)
    return data


def test_router_page_escapes_refreshes_and_colours():
    page = render(_router_data())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta http-equiv="refresh" content="7">' in page
    assert "&lt;maps&amp;co&gt;" in page and "<maps&co>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page.lower()
    assert UP_COLOUR in page and DOWN_COLOUR in page
    assert re.search(r'<tr class="up"><td>127\.0\.0\.1:3000</td><td><b>UP</b>', page)
    assert re.search(r'<tr class="down"><td>127\.0\.0\.1:3001</td><td><b>DOWN</b>', page)
    assert "for 1m00s, HTTP 200" in page                 # since (now - since) and why
    assert "1/2 up" in page and "5.0 MiB" in page


def test_pages_have_no_external_references():
    for page in (render(_router_data(apps=[{**_router_data()["apps"][0], "name": "http://evil.example/x"}])),
                 render(_terminator_data())):
        assert "<script" not in page.lower() and "src=" not in page and "href=" not in page
        assert "@import" not in page and "url(" not in page
        # A URL may appear only as escaped text of data, never as markup.
        for m in re.finditer(r"https?://", page):
            before = page[:m.start()]
            assert before.rfind(">") > before.rfind("<"), page[m.start() - 40:m.end() + 20]


def _terminator_data():
    return {
        "stage": "tls-terminator", "version": "0.1.0", "now": 1000.0, "refresh": 3, "started": 900.0,
        "processes": [{"pid": 5, "started": 900.0, "uptime": 100.0, "connections": 1, "requests": 9}],
        "connections": 1, "connections_total": 9, "connection_rate": 0.5, "handshakes": {"TLSv1.3": 7},
        "handshakes_total": 7, "handshake_rate": 0.4, "failures": {"protocol_version": 2}, "failures_total": 2,
        "bytes_in": 10, "bytes_out": 20, "passthrough": 0, "max_connections_reached": 0, "max_connections": 100,
        "listen": "0.0.0.0:443", "forward_to": "127.0.0.1:8443", "expiry_warning_days": 14,
        "certificates": [
            {"file": "/c/long.pem", "names": ["maps.localhost"], "key_type": "ECDSA secp256r1",
             "not_after": "2027-01-01T00:00:00+00:00", "days_left": 300.2, "default": True},
            {"file": "/c/soon.pem", "names": ["<b>soon</b>.localhost"], "key_type": "RSA 2048",
             "not_after": "2026-01-05T00:00:00+00:00", "days_left": 3.5, "default": False},
            {"file": "/c/old.pem", "names": ["old.localhost"], "key_type": "RSA 2048",
             "not_after": "2020-01-05T00:00:00+00:00", "days_left": -30, "default": False},
        ],
    }


def test_terminator_page_certificates_and_failures():
    page = render(_terminator_data())
    assert '<meta http-equiv="refresh" content="3">' in page
    assert "protocol_version" in page and "TLSv1.3" in page
    assert "&lt;b&gt;soon&lt;/b&gt;.localhost" in page
    assert '<td class="num">300 days</td>' in page
    assert '<td class="num bad">4 days</td>' in page          # < 14 days: red
    assert '<td class="num bad">expired</td>' in page


# --------------------------------------------------------------------------- [admin] config

ROUTER = """
[router]
state_file = "state/health.json"
[listen.public]
address = "127.0.0.1:8080"
[[app]]
name = "maps"
hosts = ["maps.localhost"]
servers = ["127.0.0.1:3000"]
"""


@pytest.mark.parametrize("table, problem", [
    ('address = "0.0.0.0:8404"', "admin.address: 0.0.0.0:8404: must be a loopback address"),
    ('address = "192.168.1.2:8404"', "admin.address: 192.168.1.2:8404: must be a loopback address"),
    ('address = "[::]:8404"', "admin.address: [::]:8404: must be a loopback address"),
    ('address = "localhost:8404"', "admin.address: localhost:8404: must be a loopback address"),
    ('address = "unix:/tmp/x"', "admin.address: unix:/tmp/x: must be a TCP loopback address"),
    ("", "admin.address: required key is missing"),
    ('address = "127.0.0.1:8404"\nrefresh = 0', "admin.refresh: 0 is out of range (1-3600)"),
    ('address = "127.0.0.1:8404"\nport = 1', "admin.port: unknown key"),
])
def test_admin_config_errors(tmp_path, table, problem):
    path = tmp_path / "mux-router.toml"
    path.write_text(ROUTER + "[admin]\n" + table + "\n")
    with pytest.raises(ConfigError) as e:
        load_router_config(path)
    assert str(e.value) == f"{path}: {problem}" or str(e.value).startswith(f"{path}: {problem}")


def test_admin_config(tmp_path):
    path = tmp_path / "mux-router.toml"
    path.write_text(ROUTER)
    assert load_router_config(path).admin is None
    path.write_text(ROUTER + '[admin]\naddress = "127.0.0.2:8404"\n')
    admin = load_router_config(path).admin
    assert str(admin.address) == "127.0.0.2:8404" and admin.refresh == 5
    assert admin.stats_dir == (tmp_path / "state" / "stats").resolve()
    path.write_text(ROUTER + '[admin]\naddress = "[::1]:8404"\nrefresh = 30\nstats_dir = "s"\n')
    admin = load_router_config(path).admin
    assert admin.refresh == 30 and admin.stats_dir == (tmp_path / "s").resolve()


def test_terminator_admin_config(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "tls-terminator.toml"
    base = '[terminator]\nlisten = "127.0.0.1:8443"\nforward_to = "127.0.0.1:8080"\n[[certificate]]\ncert = "x.pem"\n'
    path.write_text(base + '[admin]\naddress = "127.0.0.1:8405"\n')
    admin = load_terminator_config(path, require_files=False).admin
    assert str(admin.address) == "127.0.0.1:8405" and admin.stats_dir == (tmp_path / "state" / "stats").resolve()
    path.write_text(base + '[admin]\naddress = "10.0.0.1:8405"\n')
    with pytest.raises(ConfigError, match="admin.address: 10.0.0.1:8405: must be a loopback address"):
        load_terminator_config(path, require_files=False)


def test_frontgate_status_lists_the_stats_pages():
    from frontgate_ops.status import format_status
    facts = {"time": 0.0, "supervisord": {"running": True}, "processes": [], "health": {"error": "x"},
             "certificates": [], "admin": {"mux-router": "http://127.0.0.1:8404/stats",
                                           "tls-terminator": "http://127.0.0.1:8405/stats"}}
    text = format_status(facts)
    assert "stats pages\n  mux-router      http://127.0.0.1:8404/stats\n  tls-terminator  http://127.0.0.1:8405/stats" in text
    assert "stats pages" not in format_status({**facts, "admin": {}})

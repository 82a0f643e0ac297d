"""The name and client-certificate bypasses, tried from outside through both real stages.

tls-terminator -> mux-router -> a recording backend. The app `secure` (secure.localhost and
*.internal.localhost) declares client_ca; the terminator follows that declaration through its
router_config. The router's TLS listener has sni_host_check off, so the router's own rule (a
certificate verified for that very name) is what refuses, not the generic 421 check. Real clients:
openssl s_client for server names Python will not send, Python's ssl otherwise, raw sockets from
127.0.0.2 on the plain listener as the outside.
"""
from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from tests.certmaker import make_leaf
from tests.helpers import free_port, start_daemon, stop_daemon
from tests.integration.test_terminator import Terminator
from tests.pipeline import RecordingBackend

ROUTER = """[router]
state_file = "state/health.json"
trusted_sources = ["127.0.0.1/32"]
access_log = "off"
[listen.from_terminator]
address = "127.0.0.1:{tls_port}"
proxy_protocol = true
scheme = "https"
sni_host_check = false
[listen.public]
address = "127.0.0.2:{plain_port}"
scheme = "http"
[[app]]
name = "secure"
hosts = ["secure.localhost", "*.internal.localhost"]
client_ca = "clients-ca.pem"
servers = ["127.0.0.1:{backend}"]
[[app]]
name = "open"
hosts = ["open.localhost"]
servers = ["127.0.0.1:{backend}"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("names")
    ca, clients = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    clients.cert_pem.write_to_path(str(d / "clients-ca.pem"))
    make_leaf(ca, "secure.localhost", "*.internal.localhost", "open.localhost").write_pem(d / "site.pem")
    make_leaf(clients, cn="alice", client=True).write_pem(d / "alice.pem")
    backend = RecordingBackend().start()
    tls_port, plain_port = free_port(), free_port("127.0.0.2")
    (d / "state").mkdir()
    (d / "mux-router.toml").write_text(ROUTER.format(tls_port=tls_port, plain_port=plain_port, backend=backend.port))
    router = start_daemon(["mux-router", "--config", str(d / "mux-router.toml")], wait_for=("127.0.0.1", tls_port))
    terminator = None
    try:
        terminator = Terminator(d, '[[certificate]]\ncert = "site.pem"\n', f"127.0.0.1:{tls_port}",
                                router_config='"mux-router.toml"')
        yield d, terminator, plain_port, backend
    finally:
        if terminator is not None:
            terminator.stop()
        out = stop_daemon(router)
        backend.stop()
    assert "Traceback" not in out, out


def request(host: str, body: bool) -> bytes:
    """A GET (the router's fast path) or a POST with a body (its engine)."""
    if body:
        return f"POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".encode()
    return f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def s_client(d: Path, port: int, data: bytes, *args: str) -> str:
    """openssl s_client as the client: any server name, the request on stdin, what came back."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(d / "ca.pem"),
                        "-quiet", "-ign_eof", *args], input=data, capture_output=True, timeout=20)
    return (r.stdout + r.stderr).decode("latin-1")


def tls_request(d: Path, port: int, server_name: str | None, data: bytes, cert: bool = False) -> bytes:
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(str(d / "alice.pem"))
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=server_name) as s:
        s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return out


def status_of(answer: str | bytes) -> int | None:
    text = answer.decode("latin-1") if isinstance(answer, bytes) else answer
    start = text.find("HTTP/1.1 ")
    return int(text[start + 9:start + 12]) if start >= 0 else None


def forwarded_hosts(backend: RecordingBackend) -> list[str]:
    return [data.split(b"\r\nHost: ", 1)[1].split(b"\r\n", 1)[0].decode() for data in backend.snapshot()]


@pytest.mark.parametrize("body", [False, True], ids=["fast path", "engine"])
@pytest.mark.parametrize("server_name", [
    "secure.localhost..",           # two trailing dots: not a name (the router once stripped every dot)
    "secure..localhost",
    ".secure.localhost",
    "secure.localhost\u00e9",       # non-ASCII
    "secure_localhost",
    "open.localhost..",             # refused even for a host that needs no certificate
    "open.localhost\x01",
])
def test_a_server_name_that_is_not_a_name_is_refused_in_the_handshake(stack, server_name, body):
    d, t, _, backend = stack
    backend.clear()
    host = "open.localhost" if server_name.startswith("open") else "secure.localhost"
    out = s_client(d, t.port, request(host, body), "-servername", server_name)
    assert status_of(out) is None, out
    assert "alert" in out.lower() or "error" in out.lower(), out
    assert backend.snapshot() == []


@pytest.mark.parametrize("body", [False, True], ids=["fast path", "engine"])
@pytest.mark.parametrize("how,expected", [
    (["-noservername"], 421),                       # no SNI: no certificate was asked for
    (["-servername", "127.0.0.1"], 421),            # an IP literal names no host
    (["-servername", "open.localhost"], 421),       # another name's connection
    (["-servername", "secure.localhost"], None),    # the right name, no certificate: the handshake fails
])
def test_a_protected_host_needs_a_certificate_verified_for_that_very_name(stack, how, expected, body):
    d, t, _, backend = stack
    backend.clear()
    for host in ("secure.localhost", "SECURE.localhost.", "a.internal.localhost"):
        out = s_client(d, t.port, request(host, body), *how)
        assert status_of(out) == expected, (host, out)
    assert backend.snapshot() == []


def test_a_wildcard_is_one_label_for_the_certificate_rule_and_the_route(stack):
    d, t, _, backend = stack
    backend.clear()
    # *.internal.localhost covers a.internal.localhost only: a deeper name gets no certificate
    # demand, and no route to the protected app either.
    out = s_client(d, t.port, request("a.b.internal.localhost", False), "-servername", "a.b.internal.localhost")
    assert status_of(out) == 404, out
    assert backend.snapshot() == []


def test_the_verified_name_serves_and_only_it(stack):
    d, t, _, backend = stack
    backend.clear()
    assert status_of(tls_request(d, t.port, "secure.localhost", request("Secure.Localhost.", True), cert=True)) == 200
    assert status_of(tls_request(d, t.port, "a.internal.localhost", request("a.internal.localhost", False),
                                 cert=True)) == 200
    # Verified for secure.localhost, asking for another protected name of the same CA: refused.
    assert status_of(tls_request(d, t.port, "secure.localhost", request("a.internal.localhost", False),
                                 cert=True)) == 421
    assert forwarded_hosts(backend) == ["Secure.Localhost.", "a.internal.localhost"]
    assert all(data.count(b"X-Client-Cert-Subject: alice\r\n") == 1 for data in backend.snapshot())


def test_an_unprotected_app_never_gets_the_subject(stack):
    d, t, _, backend = stack
    backend.clear()
    # sni_host_check is off on this listener: the certificate verified for secure.localhost says
    # nothing about open.localhost, whose backend must not be told of it.
    assert status_of(tls_request(d, t.port, "secure.localhost", request("open.localhost", False), cert=True)) == 200
    assert forwarded_hosts(backend) == ["open.localhost"]
    assert b"client-cert-subject" not in backend.snapshot()[0].lower()


@pytest.mark.parametrize("body", [False, True], ids=["fast path", "engine"])
@pytest.mark.parametrize("host,expected", [
    ("secure.localhost", 421), ("secure.localhost.", 421), ("a.internal.localhost", 421),
    ("secure.localhost..", 400), ("secure..localhost", 400), ("secure_localhost", 400), ("secure.localhost:x", 400),
    ("[::1", 400), ("open.localhost", 200),
])
def test_the_plain_listener_from_outside(stack, host, body, expected):
    d, _, plain_port, backend = stack
    backend.clear()
    with socket.create_connection(("127.0.0.2", plain_port), timeout=10, source_address=("127.0.0.2", 0)) as s:
        s.sendall(request(host, body))
        assert status_of(read_all(s)) == expected
    assert len(backend.snapshot()) == (expected == 200)

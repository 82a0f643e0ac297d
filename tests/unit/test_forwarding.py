"""mux_router.forwarding: the heads the router sends on."""
from __future__ import annotations

from mux_router.forwarding import backend_request_head, client_response_head, simple_response
from mux_router.http1 import parse_request_head, parse_response_head


def head(*lines):
    return parse_request_head(("\r\n".join(lines) + "\r\n\r\n").encode())[0]


def resp(*lines, method="GET"):
    return parse_response_head(("\r\n".join(lines) + "\r\n\r\n").encode(), method)[0]


def test_request_head_hop_by_hop_and_forwarded_headers():
    h = head("POST /a?b HTTP/1.1", "Host: maps", "Connection: keep-alive, X-Secret, Content-Length, Host",
             "Keep-Alive: 5", "X-Secret: s", "TE: trailers", "X-Forwarded-For: 6.6.6.6",
             "x-forwarded-proto: gopher", "Content-Length: 3", "Accept: */*")
    out = backend_request_head(h, client_ip="10.0.0.1", scheme="https", client_trusted=False)
    assert out == (b"POST /a?b HTTP/1.1\r\nHost: maps\r\nContent-Length: 3\r\nAccept: */*\r\n"
                   b"Connection: close\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n")


def test_request_head_appends_to_a_trusted_forwarded_for():
    h = head("GET / HTTP/1.1", "Host: h", "X-Forwarded-For: 1.1.1.1", "X-Forwarded-For: 2.2.2.2, 3.3.3.3")
    out = backend_request_head(h, client_ip="127.0.0.1", scheme="http", client_trusted=True, keep_alive=True)
    assert b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1\r\n" in out
    assert b"Connection: keep-alive\r\n" in out


def test_websocket_request_keeps_upgrade():
    h = head("GET /socket HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: websocket",
             "Sec-WebSocket-Key: k")
    out = backend_request_head(h, client_ip="1.2.3.4", scheme="http", client_trusted=False)
    assert b"Upgrade: websocket\r\n" in out and b"Connection: Upgrade\r\n" in out
    assert b"Connection: close" not in out and b"Sec-WebSocket-Key: k\r\n" in out


def test_response_head_connection_management():
    r = resp("HTTP/1.1 200 OK", "Connection: close, X-Hop", "X-Hop: 1", "Keep-Alive: timeout=5",
             "Content-Length: 2", "Upgrade: h2c")
    assert client_response_head(r, keep_alive=True, client_version="HTTP/1.1") == \
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert client_response_head(r, keep_alive=False, client_version="HTTP/1.1").endswith(
        b"Content-Length: 2\r\nConnection: close\r\n\r\n")
    assert client_response_head(r, keep_alive=True, client_version="HTTP/1.0").endswith(
        b"Connection: keep-alive\r\n\r\n")
    switching = resp("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: upgrade",
                     "Sec-WebSocket-Accept: a")
    assert client_response_head(switching, keep_alive=False, client_version="HTTP/1.1") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n"
        b"Connection: Upgrade\r\n\r\n")
    assert client_response_head(resp("HTTP/1.1 100 Continue"), keep_alive=False,
                                client_version="HTTP/1.1") == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_simple_responses():
    r = simple_response(404, close=False, detail="no app")
    head, _, body = r.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"Connection" not in head
    assert f"Content-Length: {len(body)}".encode() in head and body == b"404 Not Found\nno app\n"
    r = simple_response(301, close=True, location="https://h/a?b=1")
    assert b"Location: https://h/a?b=1\r\n" in r and b"Connection: close\r\n" in r and b"no-store" not in r
    assert simple_response(400, close=True, with_body=False).endswith(b"\r\n\r\n")

"""scripts/demo_app.py as a real subprocess: HTTP/1.1 with http.client and raw sockets, the
WebSocket echo with the `websockets` client and with hand-made (bad) frames."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import os
import signal
import socket
import struct

import pytest
import websockets

from tests.helpers import BIN, REPO, daemon_output, free_port, start_daemon, stop_daemon

DEMO_APP = REPO / "scripts" / "demo_app.py"


@pytest.fixture(scope="module")
def maps():
    port = free_port()
    proc = start_daemon([str(BIN / "python"), str(DEMO_APP), "--name", "maps", "--port", str(port),
                         "--websocket-path", "/socket"], wait_for=("127.0.0.1", port))
    yield port
    out = stop_daemon(proc)
    assert "Traceback" not in out and "Unhandled" not in out, out


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


# --------------------------------------------------------------------------- HTTP

def test_get_names_the_app_and_echoes_the_forwarded_headers(maps):
    conn = connect(maps)
    conn.request("GET", "/whoami?x=1", headers={"Host": "maps.localhost", "X-Forwarded-For": "203.0.113.7",
                                                "X-Forwarded-Proto": "https"})
    resp = conn.getresponse()
    body = resp.read().decode()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8"
    assert "<h1>maps</h1>" in body
    assert "X-Forwarded-For: 203.0.113.7" in body and "X-Forwarded-Proto: https" in body
    assert "target: /whoami?x=1" in body and "Host: maps.localhost" in body


def test_keep_alive_serves_many_requests_on_one_connection(maps):
    conn = connect(maps)
    conn.request("GET", "/1")
    conn.getresponse().read()
    sock = conn.sock
    for i in range(2, 6):
        conn.request("GET", f"/{i}")
        resp = conn.getresponse()
        assert resp.status == 200 and f"target: /{i}" in resp.read().decode()
        assert conn.sock is sock, "the same connection was kept"
    conn.close()


def test_head_has_the_headers_but_no_body(maps):
    conn = connect(maps)
    conn.request("HEAD", "/")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) > 0
    assert resp.read() == b""
    conn.request("GET", "/")            # and the connection is still in sync
    assert conn.getresponse().status == 200


def test_post_body_with_content_length_is_counted_and_hashed(maps):
    body = os.urandom(300_000)
    conn = connect(maps)
    conn.request("POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"})
    text = conn.getresponse().read().decode()
    assert f"request body: {len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}" in text
    conn.request("GET", "/after")       # the body was consumed exactly: the next request parses
    assert "target: /after" in conn.getresponse().read().decode()


def test_post_body_chunked(maps):
    chunks = [b"hello ", b"x" * 70_000, b" world"]
    conn = connect(maps)
    conn.request("POST", "/chunked", body=iter(chunks), encode_chunked=True)
    text = conn.getresponse().read().decode()
    whole = b"".join(chunks)
    assert f"request body: {len(whole)} bytes, sha256 {hashlib.sha256(whole).hexdigest()}" in text


def test_status_path_and_unsupported_method(maps):
    conn = connect(maps)
    conn.request("GET", "/status/503")
    resp = conn.getresponse()
    assert resp.status == 503 and "maps" in resp.read().decode()
    conn.request("DELETE", "/")
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD, POST"


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_http_1_0_and_connection_close_end_the_connection(maps):
    assert raw(maps, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 OK\r\n")   # then EOF
    reply = raw(maps, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in reply


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\n\r\n", b"400"),                                     # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", b"431"),
])
def test_malformed_requests_get_an_error_and_a_close(maps, request_bytes, status):
    assert raw(maps, request_bytes).startswith(b"HTTP/1.1 " + status + b" ")


# --------------------------------------------------------------------------- WebSocket

def test_websocket_echo_text_binary_fragmented_large_and_ping(maps):
    async def talk():
        async with websockets.connect(f"ws://127.0.0.1:{maps}/socket", open_timeout=10) as ws:
            replies = []
            for message in ("hello", b"\x00\x01\xffbinary", "x" * 500_000, ""):
                await ws.send(message)
                replies.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(["frag", "mented ", "text"])                 # three frames, one message
            replies.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send([b"\x01", b"\x02"])
            replies.append(await asyncio.wait_for(ws.recv(), 10))
            latency = await asyncio.wait_for(await ws.ping(b"are you there"), 10)
            return replies, latency, ws
    replies, latency, ws = asyncio.run(talk())
    assert replies == ["hello", b"\x00\x01\xffbinary", "x" * 500_000, "", "fragmented text", b"\x01\x02"]
    assert latency >= 0
    assert ws.close_code == 1000, "the server echoed our close"


class RawWebSocket:
    """A hand-driven client, for frames the `websockets` library would never send."""

    def __init__(self, port: int, path: str = "/socket", version: str = "13"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: maps.localhost\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          f"Sec-WebSocket-Version: {version}\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, self.buf
            self.buf += chunk
        self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.key = key

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv: int = 0) -> None:
        b0 = (0x80 if fin else 0) | rsv | opcode
        n = len(payload)
        length = (struct.pack("!B", (0x80 if masked else 0) | n) if n < 126 else
                  struct.pack("!BH", (0x80 if masked else 0) | 126, n) if n < 65536 else
                  struct.pack("!BQ", (0x80 if masked else 0) | 127, n))
        if masked:
            mask = os.urandom(4)
            key = (mask * (n // 4 + 1))[:n]
            payload = mask + (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        self.sock.sendall(bytes([b0]) + length + payload)

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        assert not b1 & 0x80, "server frames are not masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        return b0 & 0x0F, self._need(n)

    def expect_close(self, code: int) -> None:
        opcode, payload = self.recv_frame()
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code, (opcode, payload)
        assert self.sock.recv(10) == b"", "the server closes the TCP connection after its close frame"


def test_handshake_answer_is_rfc_6455(maps):
    ws = RawWebSocket(maps)
    assert ws.head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    accept = base64.b64encode(hashlib.sha1(ws.key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert b"\r\nSec-WebSocket-Accept: " + accept + b"\r\n" in ws.head + b"\r\n"
    ws.send_frame(0x9, b"ping!")
    assert ws.recv_frame() == (0xA, b"ping!")
    # A ping between the fragments of a message is answered at once; the message still arrives whole.
    ws.send_frame(0x1, b"one ", fin=False)
    ws.send_frame(0x9, b"in between")
    ws.send_frame(0x0, b"two")
    assert ws.recv_frame() == (0xA, b"in between")
    assert ws.recv_frame() == (0x1, b"one two")
    ws.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
    ws.expect_close(1000)


@pytest.mark.parametrize("frames, code", [
    ([dict(opcode=0x1, payload=b"hi", masked=False)], 1002),                    # clients must mask
    ([dict(opcode=0x1, payload=b"hi", rsv=0x40)], 1002),                       # no extension agreed
    ([dict(opcode=0x0, payload=b"orphan")], 1002),                             # continuation of nothing
    ([dict(opcode=0x1, payload=b"a", fin=False), dict(opcode=0x1, payload=b"b")], 1002),
    ([dict(opcode=0x9, payload=b"x" * 126)], 1002),                            # control frame too long
    ([dict(opcode=0x3, payload=b"")], 1002),                                   # reserved opcode
    ([dict(opcode=0x1, payload=b"\xff\xfe")], 1007),                          # text must be UTF-8
    ([dict(opcode=0x2, payload=b"z" * (1024 * 1024 + 1))], 1009),             # frame over the bound
])
def test_protocol_violations_are_closed_with_the_right_code(maps, frames, code):
    ws = RawWebSocket(maps)
    for frame in frames:
        ws.send_frame(**frame)
    ws.expect_close(code)


def test_fragmented_message_over_the_bound_is_refused(maps):
    ws = RawWebSocket(maps)
    piece = b"m" * (1024 * 1024)
    ws.send_frame(0x2, piece, fin=False)
    for _ in range(3):
        ws.send_frame(0x0, piece, fin=False)
    ws.send_frame(0x0, b"!", fin=False)
    ws.expect_close(1009)


def test_bad_handshakes(maps):
    assert RawWebSocket(maps, version="8").head.startswith(b"HTTP/1.1 426 ")
    reply = raw(maps, b"GET /socket HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 426 ") and b"\r\nUpgrade: websocket\r\n" in reply
    reply = raw(maps, b"GET /socket HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")


def test_no_websocket_without_the_option():
    port = free_port()
    proc = start_daemon([str(BIN / "python"), str(DEMO_APP), "--name", "coltrane", "--port", str(port)],
                        wait_for=("127.0.0.1", port))
    try:
        reply = raw(port, b"GET /socket HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
                          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ") and b"<h1>coltrane</h1>" in reply
    finally:
        stop_daemon(proc)


def test_sigterm_exits_0_and_the_log_shows_requests(maps):
    port = free_port()
    proc = start_daemon([str(BIN / "python"), str(DEMO_APP), "--name", "coltrane", "--port", str(port)],
                        wait_for=("127.0.0.1", port))
    raw(port, b"GET /logged HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1\r\nConnection: close\r\n\r\n")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    out = daemon_output(proc)
    stop_daemon(proc)
    assert f"listening on 127.0.0.1:{port}" in out
    assert '"GET /logged HTTP/1.1" 200 xff=198.51.100.1' in out

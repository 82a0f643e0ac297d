"""scripts/bench/floor.py, the relay scenario 4 measures the router against: it must really relay
keep-alive requests (or its numbers mean nothing), and with --parsers it must really run the
router's parsers (a head they refuse is not relayed)."""
from __future__ import annotations

import socket
import sys
import threading

import pytest

from tests.helpers import free_port, start_daemon, stop_daemon

BODY = b"x" * 1500          # more than one read's worth is not needed; Content-Length framing is


class _Backend:
    """Keep-alive HTTP/1.1 backend on 127.0.0.1: answers every head with BODY, records the heads."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                    continue
                self.heads.append(buf[:end + 4])
                buf = buf[end + 4:]
                # Head and body in two writes: the relay must frame the body across reads.
                conn.sendall(b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: %d\r\n\r\n" % len(BODY))
                conn.sendall(BODY)

    def close(self) -> None:
        self.sock.close()


def _read_response(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf or len(buf.split(b"\r\n\r\n", 1)[1]) < len(BODY):
        data = sock.recv(65536)
        if not data:
            return buf
        buf += data
    return buf


@pytest.fixture
def backend():
    b = _Backend()
    yield b
    b.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parsers", [False, True])
def test_relays_keep_alive_requests_whole(backend, parsers):
    port = free_port()
    proc = start_daemon([sys.executable, "-m", "scripts.bench.floor", "--port", str(port), "--backend",
                         str(backend.port), *(["--parsers"] if parsers else [])], wait_for=("127.0.0.1", port))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for i in range(3):
                s.sendall(b"GET /%d HTTP/1.1\r\nHost: a.localhost\r\n\r\n" % i)
                response = _read_response(s)
                assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(BODY)
                assert len(response.split(b"\r\n\r\n", 1)[1]) == len(BODY)
        assert [h.split(b" ")[1] for h in backend.heads] == [b"/0", b"/1", b"/2"]
    finally:
        stop_daemon(proc)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("parsers", [False, True])
def test_only_the_parsers_refuse_a_malformed_head(backend, parsers):
    port = free_port()
    proc = start_daemon([sys.executable, "-m", "scripts.bench.floor", "--port", str(port), "--backend",
                         str(backend.port), *(["--parsers"] if parsers else [])], wait_for=("127.0.0.1", port))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nBad Name: x\r\n\r\n")   # a space in a field name
            response = _read_response(s)
        if parsers:
            assert response == b"" and backend.heads == []        # closed, nothing forwarded
        else:
            assert response.endswith(BODY) and len(backend.heads) == 1
    finally:
        stop_daemon(proc)

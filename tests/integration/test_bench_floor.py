"""scripts/bench/floor.py, the relay scenario 4 measures the router against: it must really relay
keep-alive requests (or its numbers mean nothing), and with --parsers it must really run the
router's parsers (a head they refuse is not relayed)."""
from __future__ import annotations

import socket
import sys

import pytest

from tests.helpers import free_port, start_daemon, stop_daemon
from tests.pipeline import ThreadServer

BODY = b"x" * 1500


class _KeepAliveBackend(ThreadServer):
    """Answers every request head on a connection with BODY, and records the heads."""

    def __init__(self):
        super().__init__(self._handle)
        self.heads: list[bytes] = []

    async def _handle(self, reader, writer) -> None:
        try:
            while True:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                # Head and body in two writes: the relay must frame the body across reads.
                writer.write(b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: %d\r\n\r\n" % len(BODY))
                await writer.drain()
                writer.write(BODY)
                await writer.drain()
        except (ConnectionError, EOFError):
            pass
        finally:
            writer.close()


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
    b = _KeepAliveBackend().start()
    yield b
    b.stop()


@pytest.fixture(params=[False, True], ids=["bare", "parsers"])
def relay(request, backend):
    """(port, parsers): the relay in front of `backend`, without and with --parsers."""
    port = free_port()
    proc = start_daemon([sys.executable, "-m", "scripts.bench.floor", "--port", str(port), "--backend",
                         str(backend.port), *(["--parsers"] if request.param else [])], wait_for=("127.0.0.1", port))
    yield port, request.param
    stop_daemon(proc)


@pytest.mark.timeout(30)
def test_relays_keep_alive_requests_whole(backend, relay):
    port, _ = relay
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i in range(3):
            s.sendall(b"GET /%d HTTP/1.1\r\nHost: a.localhost\r\n\r\n" % i)
            response = _read_response(s)
            assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(BODY)
            assert len(response.split(b"\r\n\r\n", 1)[1]) == len(BODY)
    assert [h.split(b" ")[1] for h in backend.heads] == [b"/0", b"/1", b"/2"]


@pytest.mark.timeout(30)
def test_only_the_parsers_refuse_a_malformed_head(backend, relay):
    port, parsers = relay
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.localhost\r\nBad Name: x\r\n\r\n")   # a space in a field name
        response = _read_response(s)
    if parsers:
        assert response == b"" and backend.heads == []        # closed, nothing forwarded
    else:
        assert response.endswith(BODY) and len(backend.heads) == 1

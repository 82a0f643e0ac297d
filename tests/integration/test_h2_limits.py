"""HTTP/2 limits and attacks, each bounded and closed with GOAWAY: straight to a real mux-router
behind a PROXY header that says ALPN h2, with raw frames where an attacker would send them
(hyperframe, hpack) and the h2 library as the client otherwise. Each test counts what reached
the backends, so the bound is proved, not only the GOAWAY."""
from __future__ import annotations

import socket
import time

import hpack
import pytest
from h2.errors import ErrorCodes
from hpack.hpack import encode_integer
from hyperframe.frame import (ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame,
                              SettingsFrame)

from mux_router import h2_limits
from tests.h2client import H2Client, proxy_header
from tests.integration.test_router import Env, running

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class LimitsEnv(Env):
    """The router with short client and keep-alive timeouts (the stalls and idle closes)."""

    def start(self):
        super().start()
        text = self.config.read_text().replace("[timeouts]\n", "[timeouts]\nclient = 1\nkeep_alive = 1\n", 1)
        self.config.write_text(text)
        import signal
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from running(LimitsEnv(tmp_path_factory.mktemp("h2limits")))


class RawClient:
    """Frames as an attacker writes them."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.buf = b""
        self.sock.sendall(proxy_header() + PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames) -> None:
        try:
            self.sock.sendall(b"".join(f.serialize() if isinstance(f, Frame) else f for f in frames))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def block(self, path: str = "/", extra=()) -> bytes:
        return self.encoder.encode([(":method", "GET"), (":scheme", "https"), (":authority", "coltrane.localhost"),
                                    (":path", path), *extra])

    def headers(self, sid: int, path: str = "/", end: bool = True) -> HeadersFrame:
        return HeadersFrame(sid, self.block(path), flags=["END_HEADERS"] + (["END_STREAM"] if end else []))

    def goaway(self, timeout: float = 10) -> GoAwayFrame | None:
        """Frames until the GOAWAY (None if the connection closes without one)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(1)
        while time.monotonic() < deadline:
            while len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
                if isinstance(frame, GoAwayFrame) and frame.last_stream_id != 2 ** 31 - 1:
                    return frame
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buf += data
        return None

    def closed(self) -> bool:
        self.sock.settimeout(5)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


def requests_to(env, name: str = "coltrane") -> int:
    return env.backends[name].requests


def test_rapid_reset_is_bounded_and_closed_with_goaway(env):
    before = requests_to(env)
    c = RawClient(env.proxied)
    sent = 0
    for sid in range(1, 2 * 1000, 2):           # 1000 HEADERS, each reset at once (CVE-2023-44487)
        c.send(c.headers(sid, "/r?sleep=0.2"), RstStreamFrame(sid, error_code=ErrorCodes.CANCEL))
        sent += 1
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert c.closed()
    time.sleep(0.5)
    assert requests_to(env) - before <= h2_limits.RESET_BURST + 10 < sent


@pytest.mark.parametrize("frame", ["settings", "ping"])
def test_settings_and_ping_floods_are_closed_with_goaway(env, frame):
    c = RawClient(env.proxied)
    make = (lambda i: SettingsFrame(0, settings={4: 65535})) if frame == "settings" \
        else (lambda i: PingFrame(0, opaque_data=i.to_bytes(8, "big")))
    c.send(*[make(i) for i in range(h2_limits.CONTROL_BURST * 3)])
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert c.closed()


def test_a_few_pings_and_settings_are_fine(env):
    c = H2Client.to_router(env.proxied)
    for i in range(20):
        c.conn.ping(i.to_bytes(8, "big"))
    c.send()
    assert c.get("coltrane.localhost").status == 200 and c.goaway is None
    c.close()


def test_continuation_flood_is_closed_with_goaway(env):
    before = requests_to(env)
    c = RawClient(env.proxied)
    block = c.block()
    c.send(HeadersFrame(1, block[:5], flags=["END_STREAM"]),
           *[ContinuationFrame(1, b"\x00" * 1000) for _ in range(200)])
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert c.closed() and requests_to(env) == before


def test_header_list_larger_than_the_setting_is_closed_with_goaway(env):
    c = RawClient(env.proxied)
    block = c.block(extra=[(f"x-big-{i}", "v" * 8000) for i in range(10)])     # 80 KB > 64 KB
    pieces = [block[i:i + 16000] for i in range(0, len(block), 16000)]
    c.send(HeadersFrame(1, pieces[0], flags=["END_STREAM"]),
           *[ContinuationFrame(1, p, flags=["END_HEADERS"] if i == len(pieces) - 2 else []) for i, p in enumerate(pieces[1:])])
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert c.closed()


def test_hpack_table_larger_than_the_setting_is_closed_with_goaway(env):
    c = RawClient(env.proxied)
    resize = bytearray(encode_integer(h2_limits.HEADER_TABLE_SIZE * 16, 5))
    resize[0] |= 0x20                           # a dynamic table size update (RFC 7541 6.3)
    c.send(HeadersFrame(1, bytes(resize) + c.block(), flags=["END_HEADERS", "END_STREAM"]))
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code in (ErrorCodes.COMPRESSION_ERROR, ErrorCodes.PROTOCOL_ERROR)
    assert c.closed()


def test_more_streams_than_max_concurrent_streams_is_closed_with_goaway(env):
    before = requests_to(env)
    c = RawClient(env.proxied)
    n = h2_limits.MAX_CONCURRENT_STREAMS + 20
    c.send(*[c.headers(2 * i + 1, "/slow?sleep=2") for i in range(n)])
    goaway = c.goaway()
    assert goaway is not None and goaway.error_code in (ErrorCodes.PROTOCOL_ERROR, ErrorCodes.REFUSED_STREAM)
    assert c.closed()
    time.sleep(0.5)
    assert requests_to(env) - before <= h2_limits.MAX_CONCURRENT_STREAMS


def test_zero_window_stall_is_closed_with_goaway(env):
    """The client takes the first 64 KiB of a large response and never opens its windows again:
    after timeouts.client (1 s here) the router gives up on it (the backend is not read meanwhile)."""
    c = H2Client.to_router(env.proxied, auto_ack=False)
    sid = c.request("coltrane.localhost", "/big", method="POST", body=b"b" * 2_000_000,
                    headers=[(b"content-length", b"2000000")])
    assert c.wait(lambda: c.goaway is not None or c.closed, timeout=15)
    assert c.goaway is not None and c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert len(c.responses[sid].body) <= 65535 and not c.responses[sid].ended
    c.close()


def test_idle_connection_is_closed_with_goaway(env):
    c = H2Client.to_router(env.proxied)
    assert c.get("coltrane.localhost").status == 200
    assert c.wait(lambda: c.goaway is not None, timeout=5)      # keep_alive = 1 s
    assert c.goaway.error_code == ErrorCodes.NO_ERROR and c.wait_closed()


def test_stalled_request_body_resets_the_stream_only(env):
    c = H2Client.to_router(env.proxied)
    sid = c.request("coltrane.localhost", "/up", method="POST", body=b"x" * 10, end=False,
                    headers=[(b"content-length", b"100")])
    assert c.wait(lambda: c.responses[sid].reset is not None or c.responses[sid].ended, timeout=5)
    assert c.responses[sid].reset is not None and c.goaway is None
    assert c.get("coltrane.localhost").status == 200
    c.close()


@pytest.mark.parametrize("listener", ["public", "proxied"])
def test_cleartext_h2c_prior_knowledge_is_refused(env, listener):
    port = env.public if listener == "public" else env.proxied
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    # On the PROXY listener, a header without ALPN h2 (cleartext) is an HTTP/1.1 connection.
    pre = proxy_header(alpn=None) if listener == "proxied" else b""
    sock.sendall(pre + PREFACE + SettingsFrame(0).serialize())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data[:100]
    sock.close()


def test_upgrade_h2c_is_not_taken(env):
    sock = socket.create_connection(("127.0.0.1", env.public), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: coltrane.localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 101"), data[:100]
    sock.close()

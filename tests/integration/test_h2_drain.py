"""GOAWAY on SIGTERM (a rolling restart): the router promises every stream with a first GOAWAY,
then names the last one it serves, finishes the streams in flight and closes; the client's
streams never die mid-response."""
from __future__ import annotations

import signal
import socket
import time

import hpack
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, SettingsFrame

from tests.h2client import proxy_header
from tests.integration.test_router import Env, running

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture
def env(tmp_path):
    yield from running(Env(tmp_path))


def frames_until_eof(sock: socket.socket, timeout: float = 15) -> list[Frame]:
    frames, buf = [], b""
    deadline = time.monotonic() + timeout
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9:9 + length]))
            buf = buf[9 + length:]
            frames.append(frame)
    return frames


def test_sigterm_sends_goaway_and_finishes_the_streams_in_flight(env):
    sock = socket.create_connection(("127.0.0.1", env.proxied), timeout=10)
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"), (":authority", "coltrane.localhost"),
                                    (":path", "/slow?sleep=1.5")])
    sock.sendall(proxy_header() + PREFACE + SettingsFrame(0).serialize()
                 + HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    time.sleep(0.5)                         # the request is at the backend
    env.proc.send_signal(signal.SIGTERM)
    frames = frames_until_eof(sock)
    sock.close()
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [(g.last_stream_id, g.error_code) for g in goaways] == [(2 ** 31 - 1, 0), (1, 0)], frames
    # The stream in flight was answered in full after the GOAWAYs, then the connection closed.
    after = frames[frames.index(goaways[0]):]
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in after), frames
    assert "END_STREAM" in [f for f in frames if isinstance(f, DataFrame) and f.stream_id == 1][-1].flags
    env.proc.wait(10)


def test_sigterm_right_after_the_handshake_still_serves_the_first_request(env):
    """A fresh connection (PROXY header and preface in, no stream yet) is drained, not closed: the
    client's first request, on its way, is answered."""
    sock = socket.create_connection(("127.0.0.1", env.proxied), timeout=10)
    sock.sendall(proxy_header() + PREFACE + SettingsFrame(0).serialize())
    time.sleep(0.3)
    env.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"), (":authority", "coltrane.localhost"),
                                    (":path", "/first")])
    sock.sendall(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    frames = frames_until_eof(sock)
    sock.close()
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in frames), frames
    assert [g.last_stream_id for g in frames if isinstance(g, GoAwayFrame)][-1] == 1, frames

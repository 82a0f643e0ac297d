"""scripts/demo_app.py's pure parts: request heads, body framing, WebSocket handshake and messages."""
from __future__ import annotations

import importlib.util
import os
import struct
import sys

import pytest

from tests.helpers import REPO

_spec = importlib.util.spec_from_file_location("demo_app", REPO / "scripts" / "demo_app.py")
demo = importlib.util.module_from_spec(_spec)
sys.modules["demo_app"] = demo          # dataclasses look their module up there
_spec.loader.exec_module(demo)


def test_websocket_accept_rfc_6455_example():
    assert demo.websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_parse_head_and_keep_alive():
    r = demo.parse_head(b"\r\nGET /a?b HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Upgrade\r\n\r\n")
    assert (r.method, r.target, r.version) == ("GET", "/a?b", "HTTP/1.1")
    assert r.tokens("connection") == {"keep-alive", "upgrade"} and r.keep_alive
    assert not demo.parse_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert demo.parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert not demo.parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive


@pytest.mark.parametrize("head", [b"GET /\r\n\r\n", b"GET / HTTP/2\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", b"\r\n\r\n"])
def test_parse_head_rejects(head):
    with pytest.raises(demo.BadRequest):
        demo.parse_head(head)


@pytest.mark.parametrize("headers, result", [
    ([], ("none", 0)),
    ([("Content-Length", "12")], ("length", 12)),
    ([("Content-Length", "12"), ("content-length", "12")], ("length", 12)),
    ([("Transfer-Encoding", "chunked")], ("chunked", 0)),
])
def test_body_framing(headers, result):
    assert demo.body_framing(demo.Request("POST", "/", "HTTP/1.1", headers)) == result


@pytest.mark.parametrize("headers, status", [
    ([("Content-Length", "12"), ("Content-Length", "13")], 400),
    ([("Content-Length", "-1")], 400),
    ([("Content-Length", "1"), ("Transfer-Encoding", "chunked")], 400),
    ([("Transfer-Encoding", "gzip, chunked")], 501),
    ([("Content-Length", str(10**12))], 413),
])
def test_body_framing_rejects(headers, status):
    with pytest.raises(demo.BadRequest) as e:
        demo.body_framing(demo.Request("POST", "/", "HTTP/1.1", headers))
    assert e.value.status == status


def test_frames_and_unmask():
    assert demo.encode_frame(1, b"hi") == b"\x81\x02hi"
    assert demo.encode_frame(2, b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert demo.encode_frame(2, b"x" * 70000)[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)
    data, mask = os.urandom(1001), os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert demo.unmask(masked, mask) == data
    assert demo.unmask(b"", mask) == b""


def test_message_assembler():
    a = demo.MessageAssembler(max_message=10)
    assert a.feed(False, demo.OP_TEXT, b"ab") is None
    assert a.feed(False, demo.OP_CONT, b"c") is None
    assert a.feed(True, demo.OP_CONT, "dé".encode()) == (demo.OP_TEXT, "abcdé".encode())
    assert a.feed(True, demo.OP_BINARY, b"\xff") == (demo.OP_BINARY, b"\xff")
    for frames, code in [([(True, demo.OP_CONT, b"x")], 1002),
                         ([(False, demo.OP_TEXT, b"x"), (True, demo.OP_BINARY, b"y")], 1002),
                         ([(True, demo.OP_TEXT, b"\xc3")], 1007),
                         ([(False, demo.OP_BINARY, b"x" * 6), (True, demo.OP_CONT, b"y" * 5)], 1009)]:
        a = demo.MessageAssembler(max_message=10)
        with pytest.raises(demo.ProtocolError) as e:
            for frame in frames:
                a.feed(*frame)
        assert e.value.code == code


def test_utf8_split_across_fragments_is_fine():
    a = demo.MessageAssembler()
    snowman = "☃".encode()
    assert a.feed(False, demo.OP_TEXT, snowman[:1]) is None
    assert a.feed(True, demo.OP_CONT, snowman[1:]) == (demo.OP_TEXT, snowman)


@pytest.mark.parametrize("payload, result", [(b"", None), (struct.pack("!H", 1000), 1000),
                                             (struct.pack("!H", 4001) + b"why", 4001)])
def test_parse_close(payload, result):
    assert demo.parse_close(payload) == result


@pytest.mark.parametrize("payload, code", [(b"\x03", 1002), (struct.pack("!H", 1005), 1002),
                                           (struct.pack("!H", 999), 1002), (struct.pack("!H", 1000) + b"\xff", 1007)])
def test_parse_close_rejects(payload, code):
    with pytest.raises(demo.ProtocolError) as e:
        demo.parse_close(payload)
    assert e.value.code == code

"""ws_frames: frame boundaries and the router's own pongs taken out of a client's stream, fed in
every possible split."""
from __future__ import annotations

import os

import pytest

from mux_router.ws_frames import FrameStream, PING, ping_frame, unmask

TOKEN = b"frontgate:0123456789abcdef"


def frame(opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True) -> bytes:
    key = os.urandom(4) if masked else b""
    n = len(payload)
    length = bytes((n,)) if n < 126 else bytes((126,)) + n.to_bytes(2, "big") if n < 65536 else \
        bytes((127,)) + n.to_bytes(8, "big")
    length = bytes((length[0] | (0x80 if masked else 0),)) + length[1:]
    return bytes(((0x80 if fin else 0) | opcode,)) + length + key + unmask(payload, key)


TEXT, BINARY, CONT, CLOSE, PONG = 0x1, 0x2, 0x0, 0x8, 0xA

CASES = [
    # (frames the client sends, which of them the router takes out)
    ([frame(TEXT, b"hello")], []),
    ([frame(PONG, TOKEN)], [0]),                                    # our pong: consumed
    ([frame(PONG, b"the backend's ping")], []),                     # another pong: passes
    ([frame(TEXT, b"a" * 300), frame(PONG, TOKEN), frame(BINARY, b"b" * 70000)], [1]),
    # Between the fragments of a message, as RFC 6455 5.4 allows control frames to be.
    ([frame(TEXT, b"part 1", fin=False), frame(PONG, TOKEN), frame(CONT, b"part 2")], [1]),
    ([frame(PONG, b""), frame(CLOSE, b"\x03\xe8")], []),
    ([frame(PONG, TOKEN, masked=False)], [0]),                      # unmasked (the backend's direction)
]


@pytest.mark.parametrize("frames,consumed", CASES)
@pytest.mark.parametrize("split", ["whole", "bytewise", "random"])
def test_pongs_answering_the_router_are_taken_out(frames, consumed, split):
    stream = FrameStream({TOKEN})
    data = b"".join(frames)
    if split == "whole":
        pieces = [data]
    elif split == "bytewise":
        pieces = [data[i:i + 1] for i in range(len(data))] if len(data) < 5000 else [data[:1], data[1:3], data[3:]]
    else:
        cuts = sorted(set(int.from_bytes(os.urandom(3), "big") % len(data) for _ in range(8)))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    out = b"".join(stream.feed(p) for p in pieces)
    assert out == b"".join(f for i, f in enumerate(frames) if i not in consumed)
    assert stream.pongs == len(consumed) and stream.at_boundary


def test_boundaries():
    stream = FrameStream()
    data = frame(BINARY, b"x" * 200, masked=False)
    assert stream.at_boundary
    stream.feed(data[:1])
    assert not stream.at_boundary
    stream.feed(data[1:100])
    assert not stream.at_boundary
    stream.feed(data[100:])
    assert stream.at_boundary


def test_ping_frame():
    assert ping_frame(b"abc") == bytes((0x80 | PING, 3)) + b"abc"
    with pytest.raises(ValueError):
        ping_frame(b"x" * 126)

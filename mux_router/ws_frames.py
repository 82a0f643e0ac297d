"""WebSocket frames (RFC 6455 5.2), as much as the router's tunnel keepalive needs: where each
frame of a byte stream ends, the ping frames the router sends, and the client's pong frames that
answer them. Pure: bytes in, bytes and facts out; payloads are never buffered, except a pong's
(a control frame: 125 bytes at most).

    0                   1                   2                   3
    |F|R|R|R| opcode|M| len7 | extended length (16 or 64 bits) | masking key (32 bits) | payload
"""
from __future__ import annotations

import os

PING, PONG = 0x9, 0xA
MAX_CONTROL_PAYLOAD = 125


def ping_frame(payload: bytes) -> bytes:
    """A server-to-client ping (unmasked, RFC 6455 5.1), FIN set."""
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("a control frame carries at most 125 bytes")
    return bytes((0x80 | PING, len(payload))) + payload


def ping_token() -> bytes:
    """A ping payload no client will echo by chance: the pong that carries it is ours."""
    return b"frontgate:" + os.urandom(8).hex().encode()


def unmask(payload: bytes, key: bytes) -> bytes:
    if not key:
        return payload
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def header_length(head: bytes) -> int | None:
    """The length of the frame header starting `head`, once its first two bytes are known."""
    if len(head) < 2:
        return None
    len7 = head[1] & 0x7F
    return 2 + (2 if len7 == 126 else 8 if len7 == 127 else 0) + (4 if head[1] & 0x80 else 0)


def parse_header(head: bytes) -> tuple[int, int, bytes]:
    """(opcode, payload length, masking key) of a complete frame header."""
    len7 = head[1] & 0x7F
    pos = 2
    if len7 == 126:
        length, pos = int.from_bytes(head[2:4], "big"), 4
    elif len7 == 127:
        length, pos = int.from_bytes(head[2:10], "big"), 10
    else:
        length = len7
    key = head[pos:pos + 4] if head[1] & 0x80 else b""
    return head[0] & 0x0F, length, key


class FrameStream:
    """One direction of a tunnel, frame by frame. `feed` returns the bytes to pass on: all of them,
    except whole pong frames whose (unmasked) payload is in `swallow`, which are taken out and
    counted in `pongs`. `at_boundary`: the bytes so far end a frame, so another can go between.

    A pong is held back until it is whole (so that it can be taken out); every other frame's bytes
    pass as they come."""

    __slots__ = ("head", "remaining", "pong", "swallow", "pongs")

    def __init__(self, swallow: set[bytes] | None = None):
        self.head = b""              # a frame header being collected
        self.remaining = 0           # payload bytes of the current (passing) frame still to come
        self.pong: bytearray | None = None   # a pong frame being collected: header + payload so far
        self.swallow = swallow if swallow is not None else set()
        self.pongs = 0

    @property
    def at_boundary(self) -> bool:
        return not self.head and not self.remaining and self.pong is None

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        pos, n = 0, len(data)
        while pos < n:
            if self.remaining:                                  # a passing frame's payload
                take = min(self.remaining, n - pos)
                if self.pong is not None:
                    self.pong += data[pos:pos + take]
                else:
                    out += data[pos:pos + take]
                self.remaining -= take
                pos += take
                if not self.remaining and self.pong is not None:
                    out += self._pong_done()
                continue
            need = 2 if len(self.head) < 2 else header_length(self.head)
            take = min(need - len(self.head), n - pos)
            self.head += data[pos:pos + take]
            pos += take
            if len(self.head) < 2 or len(self.head) < header_length(self.head):
                continue                    # the header is not whole yet
            opcode, length, _ = parse_header(self.head)
            if opcode == PONG and length <= MAX_CONTROL_PAYLOAD:
                self.pong = bytearray(self.head)
            else:
                out += self.head
            self.head, self.remaining = b"", length
            if not length and self.pong is not None:
                out += self._pong_done()
        return bytes(out)

    def _pong_done(self) -> bytes:
        frame, self.pong = bytes(self.pong), None
        head_len = header_length(frame)
        _, _, key = parse_header(frame[:head_len])
        if unmask(frame[head_len:], key) in self.swallow:
            self.pongs += 1
            return b""
        return frame

"""Reading the server name (SNI) from a TLS ClientHello, pure: bytes in, a decision out.

SNI passthrough has to choose a route before any TLS is done, from the raw first bytes. `read_sni`
is incremental, like the PROXY codec: None while more bytes are needed, a ClientHelloInfo once the
ClientHello is complete, NotAClientHello as soon as the bytes cannot be one. It never needs more
than the ClientHello (the handshake message may span several records; each record is at most
16 KiB + 256 and the whole message at most MAX_HELLO bytes) and reads nothing after it.

Only the outer structure is checked (record and handshake framing, the vectors up to the
extensions, the server_name extension itself); everything else is OpenSSL's business when the
connection is terminated, and the backend's when it is passed through.
"""
from __future__ import annotations

from dataclasses import dataclass

RECORD_HEADER = 5
HANDSHAKE = 22
CLIENT_HELLO = 1
MAX_RECORD = (1 << 14) + 256        # TLSPlaintext: 2^14, plus slack clients never use for a hello
MAX_HELLO = 1 << 16                 # post-quantum key shares make hellos ~2 KB; 64 KiB is plenty
EXT_SERVER_NAME = 0
NAME_TYPE_HOST = 0


class NotAClientHello(ValueError):
    """The bytes are not (the start of) a well-formed TLS ClientHello."""


@dataclass(frozen=True)
class ClientHelloInfo:
    server_name: str | None       # host_name from the server_name extension, lower-case; None if absent
    length: int                   # bytes of the records that carried the ClientHello


def read_sni(buf: bytes | bytearray | memoryview) -> ClientHelloInfo | None:
    data = bytes(buf)
    message = bytearray()
    pos = 0
    needed: int | None = None      # the handshake message's full length, once its header is in
    while needed is None or len(message) < needed:
        if len(data) - pos < RECORD_HEADER:
            _check_partial_record_header(data[pos:])
            return None
        content_type, major, minor, length = data[pos], data[pos + 1], data[pos + 2], int.from_bytes(
            data[pos + 3:pos + 5], "big")
        if content_type != HANDSHAKE:
            raise NotAClientHello(f"record type {content_type}, not a handshake (22)")
        if major != 3 or minor > 4:
            raise NotAClientHello(f"record version {major}.{minor} is not TLS")
        if length == 0 or length > MAX_RECORD:
            raise NotAClientHello(f"record length {length}")
        if len(data) - pos - RECORD_HEADER < length:
            if needed is None and len(message) == 0:
                _check_handshake_header(data[pos + RECORD_HEADER:])
            return None
        message += data[pos + RECORD_HEADER:pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if needed is None and len(message) >= 4:
            needed = 4 + _check_handshake_header(message)
    return ClientHelloInfo(server_name=_parse_hello(bytes(message[4:needed])), length=pos)


def _check_partial_record_header(head: bytes) -> None:
    if len(head) >= 1 and head[0] != HANDSHAKE:
        raise NotAClientHello(f"record type {head[0]}, not a handshake (22)")
    if len(head) >= 2 and head[1] != 3:
        raise NotAClientHello(f"record version {head[1]}.x is not TLS")


def _check_handshake_header(message: bytes | bytearray) -> int:
    """The body length, when the header is all there; checks what is there."""
    if len(message) >= 1 and message[0] != CLIENT_HELLO:
        raise NotAClientHello(f"handshake type {message[0]}, not a ClientHello (1)")
    if len(message) < 4:
        return 0
    length = int.from_bytes(message[1:4], "big")
    if length > MAX_HELLO:
        raise NotAClientHello(f"ClientHello of {length} bytes exceeds {MAX_HELLO}")
    if length < 38:       # version, random, session id length, ...
        raise NotAClientHello(f"ClientHello of {length} bytes is too short")
    return length


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise NotAClientHello(f"truncated {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> bytes:
        return self.take(self.int(size, f"{what} length"), what)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _parse_hello(body: bytes) -> str | None:
    r = _Reader(body)
    version = r.take(2, "version")
    if version[0] != 3:
        raise NotAClientHello(f"ClientHello version {version[0]}.{version[1]}")
    r.take(32, "random")
    if len(r.vector(1, "session id")) > 32:
        raise NotAClientHello("session id longer than 32 bytes")
    suites = r.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise NotAClientHello("bad cipher suites vector")
    if not r.vector(1, "compression methods"):
        raise NotAClientHello("no compression methods")
    if r.left == 0:
        return None           # no extensions at all (SSL 3.0 style): no SNI
    extensions = _Reader(r.vector(2, "extensions"))
    if r.left:
        raise NotAClientHello(f"{r.left} bytes after the extensions")
    server_name = None
    seen: set[int] = set()
    while extensions.left:
        kind = extensions.int(2, "extension type")
        value = extensions.vector(2, f"extension {kind}")
        if kind in seen:
            raise NotAClientHello(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            server_name = _parse_server_name(value)
    return server_name


def _parse_server_name(value: bytes) -> str | None:
    r = _Reader(value)
    names = _Reader(r.vector(2, "server name list"))
    if r.left:
        raise NotAClientHello("bytes after the server name list")
    host = None
    while names.left:
        kind = names.int(1, "server name type")
        name = names.vector(2, "server name")
        if kind == NAME_TYPE_HOST:
            if host is not None:
                raise NotAClientHello("two host names in server_name")
            try:
                host = name.decode("ascii").lower()
            except UnicodeDecodeError:
                raise NotAClientHello("server name is not ASCII") from None
            if not host or "\x00" in host:
                raise NotAClientHello("empty or NUL in server name")
    return host

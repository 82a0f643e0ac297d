#!/usr/bin/env python3
"""A demo backend app: a small HTTP/1.1 server (and, for maps, a WebSocket echo), stdlib only.

    demo_app.py --name coltrane --port 8000
    demo_app.py --name maps --port 3000 --websocket-path /socket

Every request gets a small HTML page naming the app and echoing what arrived: method, target, the
request headers (so X-Forwarded-For and X-Forwarded-Proto set by the router show up), and the
length and SHA-256 of the request body. `/status/NNN` answers with status NNN (to demonstrate
health checks). At the WebSocket path, an RFC 6455 echo server: text and binary messages,
fragmented or not, come back as they were sent; pings are answered; close is echoed.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import os
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from email.utils import formatdate

MAX_HEAD = 64 * 1024               # request line + headers
MAX_BODY = 1024 * 1024 * 1024      # streamed and hashed, never stored
IDLE_TIMEOUT = 60.0                # keep-alive connection with no new request
HEAD_TIMEOUT = 10.0                # a started request head must be complete by then
WS_MAX_FRAME = 1024 * 1024         # larger frames are refused with 1009
WS_MAX_MESSAGE = 4 * 1024 * 1024   # and so are larger (fragmented) messages
WS_IDLE_TIMEOUT = 3600.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SHUTDOWN_GRACE = 2.0
LINGER_SECONDS = 2.0               # after an error reply, how long to swallow what the client still sends
LINGER_BYTES = 16 * 1024 * 1024

REASONS = {101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
           301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 413: "Content Too Large", 426: "Upgrade Required",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- HTTP/1.1 (pure parts)

@dataclass
class Request:
    method: str
    target: str
    version: str                                  # "HTTP/1.1" | "HTTP/1.0"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def tokens(self, name: str) -> set[str]:
        """Comma-separated header values as a set of lower-case tokens (Connection, Upgrade)."""
        return {t.strip().lower() for v in self.get(name) for t in v.split(",") if t.strip()}

    @property
    def keep_alive(self) -> bool:
        connection = self.tokens("connection")
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return "keep-alive" in connection


_TOKEN = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    while lines and lines[0] == "":                 # tolerate empty lines before a request
        lines.pop(0)
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN or not parts[1]:
        raise BadRequest(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(400, f"unsupported version {version[:20]!r}")
    request = Request(method, target, version)
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= _TOKEN:
            raise BadRequest(400, f"malformed header line {line[:80]!r}")
        request.headers.append((name, value.strip(" \t")))
    if version == "HTTP/1.1" and not request.get("host"):
        raise BadRequest(400, "HTTP/1.1 request without Host")
    return request


def body_framing(request: Request) -> tuple[str, int]:
    """("none"|"length"|"chunked", content length)."""
    te = request.get("transfer-encoding")
    cl = request.get("content-length")
    if te:
        if cl:
            raise BadRequest(400, "both Transfer-Encoding and Content-Length")
        if [t.strip().lower() for v in te for t in v.split(",")] != ["chunked"]:
            raise BadRequest(501, f"unsupported Transfer-Encoding {', '.join(te)!r}")
        return "chunked", 0
    if cl:
        values = {v.strip() for c in cl for v in c.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise BadRequest(400, f"bad Content-Length {', '.join(cl)!r}")
        length = int(values.pop())
        if length > MAX_BODY:
            raise BadRequest(413, f"request body of {length} bytes is over the limit")
        return "length", length
    return "none", 0


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Date: {formatdate(usegmt=True)}",
             *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def page(app: str, port: int, request: Request, peer: str, body_len: int, body_sha256: str,
         note: str = "") -> bytes:
    lines = [f"app: {app}", f"method: {request.method}", f"target: {request.target}",
             f"version: {request.version}", f"peer: {peer}",
             f"request body: {body_len} bytes, sha256 {body_sha256}", "", "request headers:",
             *(f"{k}: {v}" for k, v in request.headers)]
    text = "\n".join(html.escape(line, quote=False) for line in lines)
    extra = f"<p>{html.escape(note)}</p>\n" if note else ""
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(app)}</title></head>\n"
            f"<body>\n<h1>{html.escape(app)}</h1>\n<p>Served by the demo app <b>{html.escape(app)}</b> "
            f"on port {port}.</p>\n{extra}<pre>\n{text}\n</pre>\n</body></html>\n").encode()


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


def websocket_handshake_error(request: Request) -> tuple[int, str] | None:
    """Why this request is not a valid RFC 6455 opening handshake, or None if it is."""
    if request.method != "GET" or request.version != "HTTP/1.1":
        return 400, "a WebSocket handshake is an HTTP/1.1 GET"
    if "websocket" not in request.tokens("upgrade") or "upgrade" not in request.tokens("connection"):
        return 426, "this is a WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade"
    if request.get("sec-websocket-version") != ["13"]:
        return 426, "only WebSocket version 13 is supported"
    keys = request.get("sec-websocket-key")
    try:
        ok = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
    except ValueError:
        ok = False
    if not ok:
        return 400, "Sec-WebSocket-Key must be one base64-encoded 16-byte value"
    return None


# --------------------------------------------------------------------------- WebSocket frames (pure parts)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked (server-to-client) frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:120]


def parse_close(payload: bytes) -> int | None:
    """The status code of a received close frame (None if it has none); ProtocolError if invalid."""
    if not payload:
        return None
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame with a 1-byte payload")
    code = struct.unpack("!H", payload[:2])[0]
    if not (code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or 3000 <= code <= 4999):
        raise ProtocolError(1002, f"invalid close code {code}")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not UTF-8") from None
    return code


class MessageAssembler:
    """Turns data frames into messages: fragments, continuation rules, size and UTF-8 checks."""

    def __init__(self, max_message: int = WS_MAX_MESSAGE):
        self.max_message = max_message
        self.opcode: int | None = None
        self.parts: list[bytes] = []
        self.size = 0

    def feed(self, fin: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        """(opcode, whole message) when a message is complete, else None."""
        if opcode == OP_CONT:
            if self.opcode is None:
                raise ProtocolError(1002, "continuation frame without a message to continue")
        elif self.opcode is not None:
            raise ProtocolError(1002, "new data frame inside a fragmented message")
        else:
            self.opcode = opcode
        self.size += len(payload)
        if self.size > self.max_message:
            raise ProtocolError(1009, f"message over {self.max_message} bytes")
        self.parts.append(payload)
        if not fin:
            return None
        opcode, message = self.opcode, b"".join(self.parts)
        self.opcode, self.parts, self.size = None, [], 0
        if opcode == OP_TEXT:
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007, "text message is not UTF-8") from None
        return opcode, message


# --------------------------------------------------------------------------- the server

class DemoApp:
    def __init__(self, name: str, port: int, websocket_path: str | None, quiet: bool):
        self.name, self.port, self.websocket_path, self.quiet = name, port, websocket_path, quiet
        self.connections: set[asyncio.Task] = set()
        self.idle: set[asyncio.Task] = set()      # waiting for a next request: closed at once on stop

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.name}[{os.getpid()}]: {message}", flush=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            await self.serve_connection(reader, writer, peer_text)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass                       # the client went away, was too slow or sent an endless line
        except asyncio.CancelledError:
            pass                       # stopping: an idle keep-alive connection, or past the grace
        finally:
            self.idle.discard(task)
            self.connections.discard(task)
            writer.close()

    async def serve_connection(self, reader, writer, peer: str) -> None:
        while True:
            # Wait for the first byte of a request (idle keep-alive), then for the whole head.
            self.idle.add(asyncio.current_task())
            try:
                first = await asyncio.wait_for(reader.read(1), IDLE_TIMEOUT)
            except TimeoutError:
                return
            finally:
                self.idle.discard(asyncio.current_task())
            if not first:
                return
            try:
                rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                request = parse_head(first + rest)
                framing, length = body_framing(request)
            except asyncio.LimitOverrunError:
                await self.error(reader, writer, 431, "request head too large")
                return
            except TimeoutError:
                await self.error(reader, writer, 408, "request head not received in time")
                return
            except BadRequest as e:
                await self.error(reader, writer, e.status, str(e))
                return
            if self.websocket_path and request.target.split("?", 1)[0] == self.websocket_path:
                await self.websocket(reader, writer, request, peer)
                return
            try:
                body_len, digest = await self.read_body(reader, framing, length)
            except BadRequest as e:
                await self.error(reader, writer, e.status, str(e))
                return
            keep_alive = await self.respond(writer, request, peer, body_len, digest)
            if not keep_alive:
                return

    async def read_body(self, reader, framing: str, length: int) -> tuple[int, str]:
        """Consume the request body, hashing it as it streams by."""
        sha = hashlib.sha256()
        total = 0
        if framing == "length":
            while total < length:
                chunk = await reader.read(min(65536, length - total))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", length - total)
                sha.update(chunk)
                total += len(chunk)
        elif framing == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size_text = size_line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadRequest(400, f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":   # trailers
                        pass
                    break
                if total + size > MAX_BODY:
                    raise BadRequest(413, "request body over the limit")
                remaining = size
                while remaining:
                    chunk = await reader.read(min(65536, remaining))
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    sha.update(chunk)
                    remaining -= len(chunk)
                total += size
                if await reader.readexactly(2) != b"\r\n":
                    raise BadRequest(400, "chunk not followed by CRLF")
        return total, sha.hexdigest()

    async def respond(self, writer, request: Request, peer: str, body_len: int, digest: str) -> bool:
        keep_alive = request.keep_alive
        status, note, allow = 200, "", []
        path = request.target.split("?", 1)[0]
        if request.method not in ("GET", "HEAD", "POST"):
            status, allow = 405, [("Allow", "GET, HEAD, POST")]
        elif path.startswith("/status/"):
            code = path[len("/status/"):]
            if code.isdigit() and 200 <= int(code) <= 599:
                status, note = int(code), f"status {code} as asked by the path"
            else:
                status, note = 400, "/status/NNN takes a status code 200-599"
        body = page(self.name, self.port, request, peer, body_len, digest, note)
        headers = [("Server", f"frontgate-demo ({self.name})"), *allow]
        if status in (204, 304):
            body = b""
        else:
            headers += [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]
        if not keep_alive:
            headers.append(("Connection", "close"))
        elif request.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        writer.write(response_head(status, headers) + (b"" if request.method == "HEAD" else body))
        await writer.drain()
        xff = ", ".join(request.get("x-forwarded-for")) or "-"
        self.log(f"{peer} \"{request.method} {request.target[:200]} {request.version}\" {status} "
                 f"xff={xff} proto={','.join(request.get('x-forwarded-proto')) or '-'}")
        return keep_alive

    async def error(self, reader, writer, status: int, message: str) -> None:
        body = f"{status} {REASONS.get(status, '')}: {message}\n".encode()
        writer.write(response_head(status, [("Content-Type", "text/plain; charset=utf-8"),
                                            ("Content-Length", str(len(body))), ("Connection", "close")]) + body)
        await writer.drain()
        self.log(f"{status} {message}")
        await linger(reader, writer)

    # ---- WebSocket

    async def websocket(self, reader, writer, request: Request, peer: str) -> None:
        problem = websocket_handshake_error(request)
        if problem is not None:
            status, message = problem
            body = f"{status} {REASONS[status]}: {message}\n".encode()
            writer.write(response_head(status, [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                                                ("Content-Type", "text/plain; charset=utf-8"),
                                                ("Content-Length", str(len(body))), ("Connection", "close")])
                         + (b"" if request.method == "HEAD" else body))
            await writer.drain()
            self.log(f"{peer} websocket handshake refused: {message}")
            await linger(reader, writer)
            return
        accept = websocket_accept(request.get("sec-websocket-key")[0])
        writer.write(response_head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Accept", accept)]))
        await writer.drain()
        xff = ", ".join(request.get("x-forwarded-for")) or "-"
        self.log(f"{peer} websocket open at {request.target[:200]} xff={xff}")
        messages = 0
        try:
            messages = await self.echo(reader, writer)
            code, reason = 1000, "closed"
        except ProtocolError as e:
            code, reason = e.code, e.reason
            writer.write(encode_frame(OP_CLOSE, close_payload(e.code, e.reason)))
            await writer.drain()
            await linger(reader, writer)
        except TimeoutError:
            code, reason = 1001, "idle"
            writer.write(encode_frame(OP_CLOSE, close_payload(1001, "idle timeout")))
            await writer.drain()
        self.log(f"{peer} websocket closed ({code} {reason}) after {messages} messages")

    async def echo(self, reader, writer) -> int:
        """Echo messages until the client closes; returns how many were echoed."""
        assembler = MessageAssembler()
        messages = 0
        while True:
            fin, opcode, payload = await asyncio.wait_for(read_frame(reader), WS_IDLE_TIMEOUT)
            if opcode == OP_PING:
                writer.write(encode_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                continue
            elif opcode == OP_CLOSE:
                code = parse_close(payload)
                writer.write(encode_frame(OP_CLOSE, b"" if code is None else struct.pack("!H", code)))
                await writer.drain()
                return messages          # the server closes the TCP connection first (RFC 6455 7.1.1)
            else:
                message = assembler.feed(fin, opcode, payload)
                if message is not None:
                    writer.write(encode_frame(*message))
                    messages += 1
            await writer.drain()         # backpressure: a slow reader slows the echo down

    async def main(self, host: str) -> None:
        server = await asyncio.start_server(self.handle, host, self.port, limit=MAX_HEAD)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ws = f", WebSocket echo at {self.websocket_path}" if self.websocket_path else ""
        self.log(f"listening on {host}:{self.port}{ws}")
        await stop.wait()
        server.close()
        for task in list(self.idle):       # a proxy's pooled keep-alive connections, say
            task.cancel()
        if self.connections:
            _, pending = await asyncio.wait(list(self.connections), timeout=SHUTDOWN_GRACE)
            for task in pending:
                task.cancel()
        self.log("stopped")


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then swallow what the client is still sending (bounded in time and bytes).
    Closing with unread input makes the kernel send a RST, which can destroy our last reply
    (an error page, a close frame) before the client has read it."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            swallowed = 0
            while swallowed < LINGER_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                swallowed += len(chunk)
    except (TimeoutError, ConnectionError):
        pass


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    b0, b1 = await reader.readexactly(2)
    fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
    masked, length = bool(b1 & 0x80), b1 & 0x7F
    if rsv:
        raise ProtocolError(1002, "reserved bits set without an extension")
    if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        raise ProtocolError(1002, f"unknown opcode {opcode:#x}")
    if not masked:
        raise ProtocolError(1002, "client frames must be masked")
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
        if length < 126:
            raise ProtocolError(1002, "non-minimal frame length")
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
        if length < 1 << 16 or length >> 63:
            raise ProtocolError(1002, "non-minimal or invalid frame length")
    if opcode >= OP_CLOSE and (not fin or length > 125):
        raise ProtocolError(1002, "control frames must be final and at most 125 bytes")
    if length > WS_MAX_FRAME:
        raise ProtocolError(1009, f"frame over {WS_MAX_FRAME} bytes")
    mask = await reader.readexactly(4)
    return fin, opcode, unmask(await reader.readexactly(length), mask)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="frontgate demo backend app")
    p.add_argument("--name", required=True, help="the app's name, shown on every page")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--websocket-path", help="serve a WebSocket echo at this path, e.g. /socket")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = p.parse_args(argv)
    if args.websocket_path and not args.websocket_path.startswith("/"):
        p.error("--websocket-path must start with '/'")
    app = DemoApp(args.name, args.port, args.websocket_path, args.quiet)
    try:
        asyncio.run(app.main(args.host))
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""mux-router's exchange on pooled backend connections (mux_router/exchange.py driven by
client.py), with real sockets: response framing, 1xx, keep-alive, timeouts, stale pooled
connections, pipelining, backpressure, shutdown.

Most tests warm the pool first (the first request on a cold pool opens the backend connection,
which is then pooled) and then send the request under test on a pooled connection.

The router runs as a real subprocess, started through a tiny wrapper (INSTRUMENT) that only
observes: it prints "POOLED <request line>" or "FRESH <request line>" each time a request goes to
a backend, on a pooled or a newly connected connection. The tests assert on those markers, so a
test that claims to exercise a pooled connection (or a retry) fails if the request went otherwise.
"""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import daemon_output, free_port, start_daemon, stop_daemon, wait_until
from tests.integration.test_router import LoopThread, parse_httplog

TIMEOUT = 10

# Runs mux_router's own main(); only adds the two markers (stderr goes to the same log as stdout).
INSTRUMENT = r'''
import sys
from mux_router import exchange

def _say(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()

_ready = exchange.Exchange.backend_ready
def _ready_marked(self, route, reused, *args, **kwargs):
    if self.state is exchange.DISPATCH:
        _say(("POOLED " if reused else "FRESH ") + self.head.request_line)
    _ready(self, route, reused, *args, **kwargs)
exchange.Exchange.backend_ready = _ready_marked

sys.argv = ["mux-router", *sys.argv[1:]]
from mux_router.__main__ import main
main()
'''

ROUTER_TOML = """
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "{state}"
trusted_sources = ["127.0.0.1/32"]
grace = {grace}
[listen.public]
address = "127.0.0.1:{port}"
[timeouts]
http_request = 2
connect = 2
client = {client}
server = {server}
keep_alive = {keep_alive}
[[app]]
name = "ka"
hosts = ["ka.localhost"]
servers = ["{ka}"]
[[app]]
name = "rr"
hosts = ["rr.localhost"]
servers = ["{rr1}", "{rr2}"]
"""

BIG = 4 << 20
BIG_BODY = bytes(range(256)) * (BIG // 256)
LEN_BODY = bytes(range(256)) * 4                  # 1 KiB
CHUNKED_BODY = (b"5;ext=1\r\nhello\r\n6;a=b;q=\"x y\"\r\n world\r\n0\r\nX-Trailer-One: 1\r\n"
                b"X-Trailer-Two: 2\r\n\r\n")


# --------------------------------------------------------------------------- the keep-alive backend

class KeepAliveBackend:
    """Serves many requests per connection, answering by path (query strings ignored). Requests
    have no body. Keeps, per request, (connection number, method, target, headers)."""

    def __init__(self, name: str):
        self.name = name
        self.port = 0                   # the kernel's pick at start: a port chosen earlier can be
                                        # taken meanwhile as some connection's source port
        self.server: asyncio.Server | None = None
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.connections = 0
        self.seen: list[tuple[int, str, str, list[tuple[str, str]]]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return len(self.seen)

    def conn_of(self, marker: str) -> int:
        """The connection number that served the (last) request whose target contains marker."""
        return [c for c, _, target, _ in self.seen if marker in target][-1]

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def kill(self):
        self.server.close()
        for w in list(self.writers.values()):
            w.transport.abort()
        await self.server.wait_closed()

    async def drop_idle(self):
        """Close every connection (as a server dropping its idle keep-alive connections)."""
        for w in list(self.writers.values()):
            w.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        conn = self.connections
        self.writers[conn] = writer
        on_this_conn = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = lines[0].split(" ")
                headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
                self.seen.append((conn, method, target, headers))
                on_this_conn += 1
                path, _, query = target.partition("?")
                params = dict(p.partition("=")[::2] for p in query.split("&") if p)
                if not await self.answer(writer, method, path, params, lines[0], headers, on_this_conn):
                    return
        except ConnectionError:
            pass
        finally:
            self.writers.pop(conn, None)
            writer.close()

    async def answer(self, writer, method, path, params, request_line, headers, on_this_conn) -> bool:
        """Write the response; False: close the connection now."""
        w = writer.write
        if path == "/len":
            w(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LEN_BODY)
              + (b"" if method == "HEAD" else LEN_BODY))
        elif path == "/big":
            w(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % BIG)
            if method != "HEAD":
                w(BIG_BODY)
        elif path == "/huge":                       # mib MiB, more than the kernel's socket buffers hold
            size = int(params.get("mib", "32")) << 20
            w(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
            piece = BIG_BODY[:1 << 20]
            for _ in range(size >> 20):
                w(piece)
                await writer.drain()
        elif path == "/chunked":
            w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer-One, X-Trailer-Two\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)               # the body in separate reads
            w(CHUNKED_BODY[:12])
            await writer.drain()
            await asyncio.sleep(0.02)
            w(CHUNKED_BODY[12:])
        elif path == "/early-hints":
            w(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == "/hints-together":             # interim and final response in one write
            w(b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
        elif path == "/split-head":                 # the head in three reads
            for piece in (b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\nX-A: 1\r", b"\n\r\nsplit"):
                w(piece)
                await writer.drain()
                await asyncio.sleep(0.03)
        elif path == "/no-content":
            w(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
        elif path == "/close-delimited":
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            await writer.drain()
            await asyncio.sleep(0.05)
            w(b" of the connection")
            await writer.drain()
            return False
        elif path == "/cut":
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            await writer.drain()
            await asyncio.sleep(0.05)
            return False
        elif path == "/bad-head":
            w(b"HTTP/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == "/slow":
            await asyncio.sleep(float(params.get("sleep", "2")))
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        elif path == "/stall-body":
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await writer.drain()
            await asyncio.sleep(float(params.get("sleep", "5")))
            return False
        elif path == "/drip":                       # the body a piece at a time, each within the server timeout
            pieces, every = int(params.get("pieces", "5")), float(params.get("every", "0.4"))
            w(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 * pieces))
            for _ in range(pieces):
                await writer.drain()
                await asyncio.sleep(every)
                w(b"0123456789")
        elif path == "/silent-close":
            # The pooled-connection race: a reused connection closes as the request arrives.
            if on_this_conn > 1:
                if params.get("how") == "reset":
                    writer.transport.abort()
                return False
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        elif path == "/die":
            # rr1 dies as the request arrives (no more connects, this one reset); others answer.
            if self.name == "rr1":
                self.server.close()
                writer.transport.abort()
                return False
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsurvivor")
        elif path == "/extra":
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokXYZ")
        else:       # echo: what the request looked like when it arrived here
            body = json.dumps({"name": self.name, "request_line": request_line, "headers": headers}).encode()
            w(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
        await writer.drain()
        return True


# --------------------------------------------------------------------------- a raw client

class Client:
    def __init__(self, port: int, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_get(self, target: str, host: str = "ka.localhost"):
        """A GET head only; the test reads the answer its own way."""
        self.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

    def fill(self, size: int = 65536) -> bool:
        data = self.sock.recv(size)
        self.buf += data
        return bool(data)

    def until(self, marker: bytes) -> bytes:
        """Everything up to and including marker."""
        while marker not in self.buf:
            if not self.fill():
                raise EOFError(f"closed before {marker!r}; got {self.buf[:300]!r}")
        out, _, self.buf = self.buf.partition(marker)
        return out + marker

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise EOFError(f"closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> tuple[int, dict[str, str], bytes]:
        raw = self.until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        headers = {n.lower(): v for n, v in (line.split(": ", 1) for line in lines[1:])}
        return int(lines[0].split(" ")[1]), headers, raw

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        status, headers, raw = self.head()
        body = b"" if method == "HEAD" else self.exactly(int(headers.get("content-length", 0)))
        self.last_raw = raw + body
        return status, headers, body

    def request(self, target: str, host: str = "ka.localhost", method: str = "GET", extra: str = ""):
        self.send(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        return self.response(method)

    def rest_until_closed(self) -> bytes:
        """Everything until the peer closes (EOF or reset)."""
        try:
            while self.fill():
                pass
        except ConnectionResetError:
            pass
        out, self.buf = self.buf, b""
        return out

    def closed(self) -> bool:
        return self.rest_until_closed() == b""

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------- the router under test

def path_markers(output: str, target: str) -> list[str]:
    """"POOLED"/"FRESH" for each time a request for target went to a backend on a pooled or a
    freshly connected connection, from the output of a router run with INSTRUMENT."""
    out = []
    for line in output.splitlines():
        for kind in ("POOLED", "FRESH"):
            if line.startswith(f"{kind} ") and f" {target} HTTP/1." in line:
                out.append(kind)
    return out


class RouterProc:
    def __init__(self, tmp: Path, loop: LoopThread, backends: dict[str, KeepAliveBackend], *,
                 server: float = 1, keep_alive: float = 1, client: float = 5, grace: float = 3):
        self.port = free_port()
        self.config = tmp / "mux-router.toml"
        self.config.write_text(ROUTER_TOML.format(
            state=tmp / "health.json", port=self.port, server=server, keep_alive=keep_alive, client=client,
            grace=grace, **{n: b.address for n, b in backends.items()}))
        self.proc = start_daemon([sys.executable, "-c", INSTRUMENT, "--config", str(self.config)],
                                 wait_for=("127.0.0.1", self.port))

    def output(self) -> str:
        return daemon_output(self.proc)

    def markers(self, target: str) -> list[str]:
        return path_markers(self.output(), target)

    def log_line(self, target: str, method: str = "GET") -> dict:
        request = f'"{method} {target} HTTP/1.1"'
        lines = wait_until(lambda: [l for l in self.output().splitlines() if request in l], timeout=5,
                           what=f"access log line for {target}")
        assert len(lines) == 1, lines
        fields = parse_httplog(lines[0])
        fields["note"] = lines[0].split(request, 1)[1].strip()
        return fields


class Env:
    def __init__(self, tmp: Path, **router_args):
        self.tmp = tmp
        self.loop = LoopThread()
        self.backends = {n: KeepAliveBackend(n) for n in ("ka", "rr1", "rr2")}
        self.router: RouterProc | None = None
        self.router_args = router_args

    def start(self):
        for b in self.backends.values():
            self.loop.run(b.start())
        self.router = RouterProc(self.tmp, self.loop, self.backends, **self.router_args)

    def stop(self) -> str:
        out = ""
        try:
            if self.router is not None:
                out = stop_daemon(self.router.proc)
        finally:
            for b in self.backends.values():
                if b.server is not None:
                    self.loop.run(b.kill())
            self.loop.stop()
        return out

    @property
    def ka(self) -> KeepAliveBackend:
        return self.backends["ka"]

    @property
    def port(self) -> int:
        return self.router.port

    def warm(self, host: str = "ka.localhost", target: str = "/len?warm") -> None:
        """One request on its own connection, so that an idle pooled connection exists afterwards."""
        c = Client(self.port)
        try:
            assert c.request(target, host=host)[0] == 200
        finally:
            c.close()
        time.sleep(0.02)        # the router pools the connection once the response is complete


def running(env: Env):
    try:
        env.start()
        yield env
    finally:
        out = env.stop()
    assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def fp(tmp_path_factory):
    yield from running(Env(tmp_path_factory.mktemp("fastpath")))


_unique = iter(range(1, 1_000_000))


def uid(path: str) -> str:
    """path with a query string that makes the request line unique in the router's log."""
    return f"{path}?t={next(_unique)}"


def fast(fp: Env, target: str) -> None:
    assert fp.router.markers(target) == ["POOLED"], (target, fp.router.markers(target))


# --------------------------------------------------------------------------- response framing

def test_content_length_keep_alive_on_a_pooled_connection(fp):
    fp.warm()
    conns = fp.ka.connections
    c = Client(fp.port)
    targets = [uid("/len") for _ in range(3)]
    for t in targets:
        status, headers, body = c.request(t)
        assert status == 200 and body == LEN_BODY and headers["content-length"] == "1024"
        assert "connection" not in headers
    c.close()
    for t in targets:
        fast(fp, t)
    assert fp.ka.connections == conns                     # all on the warmed pooled connection
    assert {fp.ka.conn_of(t) for t in targets} == {conns}


def test_chunked_with_extensions_and_trailers_then_the_next_request(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/chunked")
    c.send_get(t)
    status, headers, _ = c.head()
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert c.until(b"X-Trailer-Two: 2\r\n\r\n") == CHUNKED_BODY
    t2 = uid("/len")
    status, _, body = c.request(t2)
    assert status == 200 and body == LEN_BODY and c.buf == b""
    c.close()
    fast(fp, t)
    fast(fp, t2)
    assert fp.ka.conn_of(t) == fp.ka.conn_of(t2)          # the chunked response left it reusable


def test_early_hints_then_the_final_response(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/early-hints")
    c.send_get(t)
    first = c.until(b"\r\n\r\n")
    assert first == b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    status, headers, body = c.response()
    assert status == 200 and body == b"ok"
    assert c.request(uid("/len"))[0] == 200               # and the connection carries on
    c.close()
    fast(fp, t)


def test_interim_and_final_response_in_one_read(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/hints-together")
    c.send_get(t)
    assert c.until(b"\r\n\r\n") == b"HTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n"
    assert c.response() == (200, {"content-length": "3"}, b"yes")
    t2 = uid("/len")
    assert c.request(t2)[0] == 200
    c.close()
    fast(fp, t)
    assert fp.ka.conn_of(t) == fp.ka.conn_of(t2)


def test_response_head_split_over_several_reads(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/split-head")
    status, headers, body = c.request(t)
    assert (status, headers, body) == (200, {"content-length": "5", "x-a": "1"}, b"split")
    t2 = uid("/len")
    assert c.request(t2)[0] == 200
    c.close()
    fast(fp, t)
    assert fp.ka.conn_of(t) == fp.ka.conn_of(t2)


def test_204_has_no_body_and_the_backend_connection_is_reused(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/no-content")
    c.send_get(t)
    status, headers, _ = c.head()
    assert status == 204 and headers == {"x-a": "1"}
    t2 = uid("/len")
    assert c.request(t2) == (200, {"content-length": "1024"}, LEN_BODY)
    c.close()
    fast(fp, t)
    assert fp.ka.conn_of(t) == fp.ka.conn_of(t2)


def test_http_1_0_client_keep_alive_and_close(fp):
    fp.warm()
    c = Client(fp.port)
    t1, t2 = uid("/len"), uid("/len")
    c.send(f"GET {t1} HTTP/1.0\r\nHost: ka.localhost\r\nConnection: keep-alive\r\n\r\n".encode())
    assert c.response() == (200, {"content-length": "1024", "connection": "keep-alive"}, LEN_BODY)
    c.send(f"GET {t2} HTTP/1.0\r\nHost: ka.localhost\r\n\r\n".encode())
    assert c.response() == (200, {"content-length": "1024", "connection": "close"}, LEN_BODY)
    assert c.closed()
    c.close()
    fast(fp, t1)
    fast(fp, t2)


def test_request_then_half_close_still_gets_its_response(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/slow") + "&sleep=0.2"
    c.send_get(t)
    wait_until(lambda: any(t == target for _, _, target, _ in fp.ka.seen), what="request at the backend")
    c.sock.shutdown(socket.SHUT_WR)
    status, headers, body = c.response()
    assert status == 200 and body == b"slow"
    assert c.closed()
    c.close()
    fast(fp, t)
    fields = fp.router.log_line(t)
    assert fields["status"] == "200" and fields["term"] == "--"


def test_close_delimited_body_then_the_connection_closes(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/close-delimited")
    c.send_get(t)
    status, headers, _ = c.head()
    assert status == 200 and headers.get("connection") == "close" and "content-length" not in headers
    assert c.rest_until_closed() == b"until the end of the connection"
    c.close()
    fast(fp, t)
    fields = fp.router.log_line(t)
    assert fields["status"] == "200" and fields["term"] == "--"


def test_body_cut_by_the_backend_closes_the_client_connection(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/cut")
    c.send_get(t)
    status, headers, _ = c.head()
    assert status == 200 and headers["content-length"] == "1000"
    assert c.rest_until_closed() == b"0123456789"
    c.close()
    fast(fp, t)
    fields = fp.router.log_line(t)
    assert fields["status"] == "200" and fields["term"] == "SD"
    assert fields["note"].startswith("(response cut:"), fields["note"]


def test_garbage_status_line_is_502_and_the_client_connection_stays(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/bad-head")
    status, headers, body = c.request(t)
    assert status == 502 and body.startswith(b"502 Bad Gateway")
    assert headers.get("connection") != "close"
    status, _, body = c.request(uid("/len"))              # same client connection, fresh backend one
    assert status == 200 and body == LEN_BODY
    c.close()
    fast(fp, t)
    fields = fp.router.log_line(t)
    assert fields["status"] == "502" and fields["term"] == "SH"


def test_extra_bytes_after_the_response_are_dropped_and_the_connection_not_reused(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/extra")
    status, headers, body = c.request(t)
    assert status == 200 and body == b"ok"
    conns = fp.ka.connections
    t2 = uid("/len")
    status, _, body = c.request(t2)
    assert status == 200 and body == LEN_BODY and c.buf == b""    # no "XYZ" anywhere
    c.close()
    fast(fp, t)
    assert fp.ka.connections == conns + 1                 # the dirty connection was not pooled
    assert fp.ka.conn_of(t2) != fp.ka.conn_of(t)


def test_extra_bytes_on_the_engine_path_also_leave_the_connection_unused(fp):
    """The same over-long response on a cold pool (the coroutine engine): the fast path's rule
    (a backend that sent more than its response is not trusted with another) should hold there too."""
    fp.loop.run(fp.ka.drop_idle())
    time.sleep(0.1)
    c = Client(fp.port)
    t = uid("/extra")
    assert c.request(t) == (200, {"content-length": "2"}, b"ok")
    t2 = uid("/len")
    assert c.request(t2)[0] == 200
    c.close()
    assert fp.router.markers(t) == ["FRESH"]
    assert fp.ka.conn_of(t2) != fp.ka.conn_of(t)


def test_head_request_reads_no_body(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/len")
    c.send(f"HEAD {t} HTTP/1.1\r\nHost: ka.localhost\r\n\r\n".encode())
    status, headers, raw = c.head()
    assert status == 200 and headers["content-length"] == "1024"
    t2 = uid("/len")
    status, _, body = c.request(t2)                       # the next response follows the head at once
    assert status == 200 and body == LEN_BODY
    c.close()
    assert fp.router.markers(t) == ["POOLED"]
    fast(fp, t2)
    assert fp.ka.conn_of(t) == fp.ka.conn_of(t2)


# --------------------------------------------------------------------------- timeouts

def test_server_timeout_before_the_head_is_504(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/slow") + "&sleep=3"
    started = time.monotonic()
    status, headers, body = c.request(t)
    elapsed = time.monotonic() - started
    assert status == 504 and 0.8 < elapsed < 2.5, elapsed
    assert headers.get("connection") != "close"
    assert c.request(uid("/len"))[0] == 200               # the client connection stays usable
    c.close()
    fast(fp, t)
    fields = fp.router.log_line(t)
    assert fields["status"] == "504" and fields["term"] == "sH"


def test_server_timeout_in_the_body_closes_the_client_connection(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/stall-body") + "&sleep=4"
    c.send_get(t)
    status, headers, _ = c.head()
    started = time.monotonic()
    assert status == 200 and headers["content-length"] == "100"
    assert c.rest_until_closed() == b"0123456789"
    assert 0.7 < time.monotonic() - started < 2.5
    c.close()
    fast(fp, t)
    fields = fp.router.log_line(t)
    assert fields["term"] == "sD" and fields["note"].startswith("(response cut: backend timeout")


def test_a_backend_that_keeps_sending_is_not_cut_by_the_server_timeout(fp):
    """timeouts.server is the backend's inactivity: every read re-arms it, so a body that takes
    longer than the timeout in all, but never pauses that long, arrives whole."""
    fp.warm()
    c = Client(fp.port)
    t = uid("/drip") + "&pieces=5&every=0.4"
    started = time.monotonic()
    status, _, body = c.request(t)
    assert status == 200 and body == b"0123456789" * 5
    assert time.monotonic() - started > 1.5                 # longer than the 1 s timeout
    assert c.request(uid("/len"))[0] == 200
    c.close()
    fast(fp, t)
    assert fp.router.log_line(t)["term"] == "--"


def test_keep_alive_timeout_closes_an_idle_client_after_a_fast_path_request(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/len")
    assert c.request(t)[0] == 200
    answered = time.monotonic()
    assert c.closed()
    assert 0.7 < time.monotonic() - answered < 2.5
    c.close()
    fast(fp, t)


# --------------------------------------------------------------------------- stale pooled connections

def test_pooled_connection_dropped_while_idle_is_replaced(fp):
    fp.warm()
    fp.loop.run(fp.ka.drop_idle())
    time.sleep(0.1)
    conns = fp.ka.connections
    c = Client(fp.port)
    t = uid("/len")
    status, _, body = c.request(t)
    assert status == 200 and body == LEN_BODY
    c.close()
    assert fp.ka.connections == conns + 1
    # The closed pooled connection was noticed before use: this one went to the engine.
    assert fp.router.markers(t) == ["FRESH"]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_pooled_connection_closed_as_the_request_arrives_is_retried_fresh(fp, how):
    fp.warm()
    conns = fp.ka.connections
    c = Client(fp.port)
    t = uid("/silent-close") + f"&how={how}"
    status, _, body = c.request(t)
    assert status == 200 and body == b"fresh"
    assert c.request(uid("/len"))[0] == 200
    c.close()
    # Tried on the pooled connection (fast path), handed back, retried on a fresh one.
    assert fp.router.markers(t) == ["POOLED", "FRESH"]
    assert fp.ka.connections == conns + 1
    assert [conn for conn, _, target, _ in fp.ka.seen if target == t] == [conns, conns + 1]
    fields = fp.router.log_line(t)
    assert fields["status"] == "200" and fields["term"] == "--"


# --------------------------------------------------------------------------- request framing

def test_pipelined_requests_are_answered_in_order(fp):
    fp.warm()
    c = Client(fp.port)
    t1, t2, t3 = uid("/len"), uid("/echo"), uid("/len")
    c.send(f"GET {t1} HTTP/1.1\r\nHost: ka.localhost\r\n\r\nGET {t2} HTTP/1.1\r\nHost: ka.localhost\r\n\r\n"
           f"HEAD {t3} HTTP/1.1\r\nHost: ka.localhost\r\n\r\n".encode())
    assert c.response() == (200, {"content-length": "1024"}, LEN_BODY)
    status, _, body = c.response()
    assert status == 200 and json.loads(body)["request_line"] == f"GET {t2} HTTP/1.1"
    status, headers, _ = c.response("HEAD")
    assert status == 200 and headers["content-length"] == "1024"
    assert c.request(uid("/len"))[0] == 200 and c.buf == b""
    c.close()
    assert [target for _, _, target, _ in fp.ka.seen[-4:-1]] == [t1, t2, t3]
    # One after another, each forwarded once, on the connection the one before left in the pool.
    assert all(fp.router.markers(t) == ["POOLED"] for t in (t1, t2, t3))


def test_request_pipelined_while_a_response_is_on_its_way(fp):
    fp.warm()
    c = Client(fp.port)
    t1, t2 = uid("/slow") + "&sleep=0.3", uid("/len")
    c.send_get(t1)
    wait_until(lambda: any(t1 == target for _, _, target, _ in fp.ka.seen), what="first request at the backend")
    c.send_get(t2)
    assert c.response() == (200, {"content-length": "4"}, b"slow")
    assert c.response() == (200, {"content-length": "1024"}, LEN_BODY)
    c.close()
    fast(fp, t1)
    fast(fp, t2)


def test_request_head_split_over_two_sends(fp):
    fp.warm()
    c = Client(fp.port)
    t = uid("/len")
    c.send(f"GET {t} HTTP/1.1\r\nHo".encode())
    time.sleep(0.2)
    c.send(b"st: ka.localhost\r\n\r\n")
    status, _, body = c.response()
    assert status == 200 and body == LEN_BODY
    t2 = uid("/len")
    assert c.request(t2)[0] == 200
    c.close()
    fast(fp, t)
    fast(fp, t2)


# --------------------------------------------------------------------------- big bodies, backpressure

def _rss_sampler(pid: int):
    import psutil
    proc = psutil.Process(pid)
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def stop() -> int:
        done.set()
        thread.join(5)
        return peak[0] - baseline
    return stop


@pytest.mark.parametrize("target, size", [("/big", BIG), ("/huge?mib=16&", 16 << 20)], ids=["4MiB", "16MiB"])
def test_big_body_to_a_slow_reader_arrives_intact_with_bounded_memory(fp, target, size):
    # 4 MiB (the spec's size) can sit almost whole in loopback socket buffers (tcp_wmem max is
    # 4 MiB by default); 16 MiB cannot, so the router has to pause the backend on the way.
    fp.warm()
    stop = _rss_sampler(fp.router.proc.pid)
    pattern = bytes(range(256)) * (size // 256)
    try:
        c = Client(fp.port, rcvbuf=64 << 10)
        t = target + f"t={next(_unique)}" if target.endswith("&") else uid(target)
        c.send_get(t)
        status, headers, _ = c.head()
        assert status == 200 and headers["content-length"] == str(size)
        body = bytearray(c.buf)
        c.buf = b""
        while len(body) < size:
            data = c.sock.recv(32 << 10)
            assert data, f"closed after {len(body)} of {size} body bytes"
            body += data
            time.sleep(0.001)
        assert len(body) == size and bytes(body) == pattern
        assert c.request(uid("/len"))[0] == 200
        c.close()
    finally:
        growth = stop()
    fast(fp, t)
    assert growth < 64 << 20, f"router RSS grew by {growth >> 20} MiB"
    fields = fp.router.log_line(t)
    assert fields["term"] == "--" and int(fields["bytes"]) > size


HUGE = 32 << 20


def _read_huge_with_a_pause(port: int, target: str, pause: float) -> int:
    """GET /huge (32 MiB), read 1 MiB, stop reading for `pause` seconds, read the rest; the body
    bytes received before the connection ended."""
    c = Client(port, rcvbuf=64 << 10)
    try:
        c.send(f"GET {target} HTTP/1.1\r\nHost: ka.localhost\r\n\r\n".encode())
        status, headers, _ = c.head()
        assert status == 200
        got = len(c.buf)
        c.buf = b""
        paused = False
        while got < HUGE:
            if got >= 1 << 20 and not paused:
                paused = True
                time.sleep(pause)
            data = c.sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
        return got
    finally:
        c.close()


def test_client_pausing_less_than_the_client_timeout_is_not_cut_as_a_server_timeout(fp):
    """timeouts.server (1 s here) is the backend's inactivity; a client that stops reading for
    1.6 s (< timeouts.client = 5 s) is not the server's fault, and the coroutine engine does not
    cut it. The fast path must not either."""
    # Through the engine (cold pool: the first request on a fresh backend connection).
    fp.loop.run(fp.ka.drop_idle())
    time.sleep(0.1)
    t_engine = uid("/huge")
    got_engine = _read_huge_with_a_pause(fp.port, t_engine, 1.6)
    assert fp.router.markers(t_engine) == ["FRESH"]
    # Through the fast path.
    fp.warm()
    t_fast = uid("/huge")
    got_fast = _read_huge_with_a_pause(fp.port, t_fast, 1.6)
    fast(fp, t_fast)
    engine_log, fast_log = fp.router.log_line(t_engine), fp.router.log_line(t_fast)
    assert (got_engine, engine_log["term"], engine_log["note"]) == (HUGE, "--", "")
    assert (got_fast, fast_log["term"], fast_log["note"]) == (HUGE, "--", "")


def test_client_gone_mid_huge_response_then_the_router_carries_on(fp):
    fp.warm()
    c = Client(fp.port, rcvbuf=64 << 10)
    t = uid("/huge")
    c.send_get(t)
    assert c.head()[0] == 200
    c.exactly(100_000)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()                                             # a reset, mid-body
    fields = fp.router.log_line(t)
    assert fields["term"] == "CD" and "client went away" in fields["note"]
    big_conn = fp.ka.conn_of(t)
    wait_until(lambda: big_conn not in fp.ka.writers, what="the dirty backend connection closed")
    c = Client(fp.port)
    t2 = uid("/len")
    status, _, body = c.request(t2)
    assert status == 200 and body == LEN_BODY
    c.close()
    assert fp.ka.conn_of(t2) != big_conn
    assert fp.router.proc.poll() is None
    fast(fp, t)


# --------------------------------------------------------------------------- same heads, same log

def test_forwarding_headers_are_the_same_on_both_paths(fp):
    fp.loop.run(fp.ka.drop_idle())
    time.sleep(0.1)
    extra = "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 6.6.6.6\r\n"
    c = Client(fp.port)
    cold, warm = uid("/echo"), uid("/echo")
    echoes = []
    for t in (cold, warm):
        status, _, body = c.request(t, extra=extra)
        assert status == 200
        echoes.append(json.loads(body))
    c.close()
    assert fp.router.markers(cold) == ["FRESH"]
    fast(fp, warm)
    cold_headers, warm_headers = ([(n, v) for n, v in e["headers"]] for e in echoes)
    assert cold_headers == warm_headers
    lower = {n.lower(): v for n, v in warm_headers}
    assert lower["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert lower["x-forwarded-proto"] == "http"
    assert lower["x-real-ip"] == "127.0.0.1"
    assert lower["connection"] == "keep-alive"


def test_access_log_lines_have_the_same_format_on_both_paths(fp):
    fp.loop.run(fp.ka.drop_idle())
    time.sleep(0.1)
    c = Client(fp.port)
    cold, warm = uid("/len"), uid("/len")
    sizes = []
    for t in (cold, warm):
        assert c.request(t)[0] == 200
        sizes.append(len(c.last_raw))
    c.close()
    assert fp.router.markers(cold) == ["FRESH"]
    fast(fp, warm)
    for t, size in zip((cold, warm), sizes):
        fields = fp.router.log_line(t)
        assert (fields["ip"], fields["frontend"]) == ("127.0.0.1", "public")
        assert (fields["backend"], fields["server"]) == ("ka", fp.ka.address)
        assert (fields["status"], int(fields["bytes"]), fields["term"]) == ("200", size, "--")
        assert fields["note"] == ""
        assert fields["conns"].endswith("/0") and fields["queues"] == "0/0"
        assert all(int(fields[k]) >= 0 for k in ("Tq", "Tw", "Tc", "Tr")) and int(fields["Tt"]) >= int(fields["Tr"])


# --------------------------------------------------------------------------- balancing

def _rr_counts(fp: Env, n: int, prefix: str) -> tuple[int, int, list[str]]:
    r1, r2 = fp.backends["rr1"], fp.backends["rr2"]
    before = (r1.requests, r2.requests)
    targets = []
    c = Client(fp.port)
    for _ in range(n):
        t = uid(prefix)
        targets.append(t)
        status, _, body = c.request(t, host="rr.localhost")
        assert status == 200
    c.close()
    return r1.requests - before[0], r2.requests - before[1], targets


def test_round_robin_stays_exact_from_cold_and_once_warm(fp):
    for b in ("rr1", "rr2"):
        fp.loop.run(fp.backends[b].drop_idle())
    time.sleep(0.1)
    n1, n2, targets = _rr_counts(fp, 10, "/rr-cold")
    assert (n1, n2) == (5, 5)
    kinds = [fp.router.markers(t) for t in targets]
    assert kinds[:2] == [["FRESH"], ["FRESH"]] and kinds[2:] == [["POOLED"]] * 8
    n1, n2, targets = _rr_counts(fp, 10, "/rr-warm")
    assert (n1, n2) == (5, 5)
    assert all(fp.router.markers(t) == ["POOLED"] for t in targets)
    # Strictly alternating, too.
    seen = {t: name for name in ("rr1", "rr2") for _, _, t, _ in fp.backends[name].seen}
    order = [seen[t] for t in targets]
    assert all(a != b for a, b in zip(order, order[1:])), order


# --------------------------------------------------------------------------- shutdown

@pytest.fixture
def own(tmp_path):
    env = Env(tmp_path, server=5, keep_alive=5, grace=3)
    try:
        env.start()
        yield env
    finally:
        out = env.stop()
    assert "Traceback" not in out, out


def test_sigterm_lets_a_fast_path_request_finish_then_exits_0(own):
    own.warm()
    idle = Client(own.port)
    assert idle.request(uid("/len"))[0] == 200            # fast path; now idle keep-alive
    c = Client(own.port)
    t = uid("/slow") + "&sleep=1.2"
    c.send_get(t)
    wait_until(lambda: any(target == t for _, _, target, _ in own.ka.seen), what="request at the backend")
    sent = time.monotonic()
    own.router.proc.send_signal(signal.SIGTERM)
    assert idle.closed()
    assert time.monotonic() - sent < 0.5                  # the idle one at once
    status, headers, body = c.response()
    assert status == 200 and body == b"slow" and headers.get("connection") == "close"
    assert c.closed()
    assert own.router.proc.wait(TIMEOUT) == 0
    assert time.monotonic() - sent < 2.5                  # right after the response, not at the grace end
    fast(own, t)
    idle.close()
    c.close()


def test_sigterm_with_only_idle_fast_path_clients_exits_at_once(own):
    own.warm()
    clients = []
    for _ in range(3):
        c = Client(own.port)
        t = uid("/len")
        assert c.request(t)[0] == 200
        fast(own, t)
        clients.append(c)
    sent = time.monotonic()
    own.router.proc.send_signal(signal.SIGTERM)
    assert own.router.proc.wait(TIMEOUT) == 0
    assert time.monotonic() - sent < 1.0
    assert all(c.closed() for c in clients)
    for c in clients:
        c.close()


@pytest.mark.parametrize("first", ["/slow", "/len"])
def test_requests_pipelined_before_the_clients_eof_are_all_answered(fp, first):
    """A client may send its requests and half-close at once: every request is still answered,
    whichever path each takes, and then the connection closes."""
    fp.warm()
    c = Client(fp.port)
    t1, t2, t3 = uid(first) + ("&sleep=0.2" if first == "/slow" else ""), uid("/len"), uid("/len")
    c.send_get(t1)
    if first == "/slow":        # the others arrive, with the EOF, while the first is on its way
        wait_until(lambda: any(t1 == target for _, _, target, _ in fp.ka.seen), what="first request at the backend")
    c.send(f"GET {t2} HTTP/1.1\r\nHost: ka.localhost\r\n\r\nGET {t3} HTTP/1.1\r\nHost: ka.localhost\r\n\r\n".encode())
    c.sock.shutdown(socket.SHUT_WR)
    assert c.response()[0] == 200
    assert c.response() == (200, {"content-length": "1024"}, LEN_BODY)
    assert c.response() == (200, {"content-length": "1024"}, LEN_BODY)
    assert c.sock.recv(1) == b""        # then closed
    c.close()
    assert [target for _, _, target, _ in fp.ka.seen[-3:]] == [t1, t2, t3]


def test_a_server_dying_under_a_pooled_request_is_redispatched_to_another(own):
    """The pooled connection is reset as the request arrives and the server takes no new
    connections: the request (nothing of it processed) goes to the other server of the app."""
    c = Client(own.port)
    for i in range(4):                  # both servers' pools warm: the last two on the fast path
        assert c.request(uid(f"/len?w{i}"), host="rr.localhost")[0] == 200
    answers = [c.request(uid("/die"), host="rr.localhost") for _ in range(2)]
    c.close()
    assert [(status, body) for status, _, body in answers] == [(200, b"survivor")] * 2
    died = [t for _, _, t, _ in own.backends["rr1"].seen if t.startswith("/die")]
    assert len(died) == 1 and own.router.markers(died[0]) == ["POOLED", "FRESH"]
    assert own.router.log_line(died[0])["status"] == "200"


# --------------------------------------------------------------------------- repeated requests

def test_a_repeated_request_gets_heads_made_under_the_config_of_the_moment(own):
    """A connection that repeats a request byte for byte gets the heads made for the last one
    (fastpath: last_sent, last_answer) only while nothing they depend on changed: after a reload
    that adds header rules to the app, the same request on the same connection carries them. One
    connection repeats a request to the echo (what the backend got), another one to /len (what
    the client got)."""
    own.warm()
    to_echo, to_fixed = Client(own.port), Client(own.port)
    echo, fixed = uid("/echo"), uid("/len")

    def ask() -> tuple[dict[str, str], dict[str, str]]:
        status, _, body = to_echo.request(echo)
        assert status == 200
        status, answered, fixed_body = to_fixed.request(fixed)
        assert status == 200 and fixed_body == LEN_BODY
        return {n.lower(): v for n, v in json.loads(body)["headers"]}, answered

    before = [ask(), ask()]
    assert before[0] == before[1]
    sent, answered = before[0]
    assert "x-rule" not in sent and "x-answer" not in answered
    config = own.router.config.read_text()
    own.router.config.write_text(config.replace(
        'servers = ["' + own.ka.address + '"]',
        'servers = ["' + own.ka.address + '"]\nrequest_headers = { set = { X-Rule = "after" } }\n'
        'response_headers = { set = { X-Answer = "after" } }'))
    assert own.router.config.read_text() != config
    own.router.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in own.router.output(), what="reload")
    sent, answered = ask()
    to_echo.close()
    to_fixed.close()
    assert sent["x-rule"] == "after" and answered["x-answer"] == "after"
    assert own.router.markers(echo) == ["POOLED"] * 3 and own.router.markers(fixed) == ["POOLED"] * 3



def test_a_repeated_request_is_routed_again_after_a_reload(own):
    """The same request bytes on the same connection, before and after a reload that moves its
    host to another app: the route made for the last request is not reused across configs."""
    own.warm()
    c = Client(own.port)
    target = uid("/echo")
    names = []
    for _ in range(2):
        status, _, body = c.request(target)
        assert status == 200
        names.append(json.loads(body)["name"])
    assert names == ["ka", "ka"] and own.router.markers(target) == ["POOLED"] * 2
    config = own.router.config.read_text()
    own.router.config.write_text(config.replace('hosts = ["ka.localhost"]', 'hosts = ["elsewhere.localhost"]')
                                 .replace('hosts = ["rr.localhost"]', 'hosts = ["rr.localhost", "ka.localhost"]'))
    own.router.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in own.router.output(), what="reload")
    for _ in range(3):                  # cold pools for rr first: the engine, then the fast path
        status, _, body = c.request(target)
        assert status == 200
        names.append(json.loads(body)["name"])
    c.close()
    assert names[2:] in (["rr1", "rr2", "rr1"], ["rr2", "rr1", "rr2"])
    assert own.router.markers(target)[-1] == "POOLED"


# --------------------------------------------------------------------------- access_log

def _reload_with(env: Env, router_line: str) -> None:
    key = router_line.split("=")[0].strip()
    config = "".join(line for line in env.router.config.read_text().splitlines(keepends=True)
                     if not line.startswith(f"{key} ="))
    env.router.config.write_text(config.replace("[router]\n", f"[router]\n{router_line}\n", 1))
    reloads = env.router.output().count("reloaded")
    env.router.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: env.router.output().count("reloaded") > reloads, what="reload")


def test_access_log_errors_keeps_only_the_abnormal_and_off_keeps_none(own):
    """`access_log = "errors"` (HAProxy's dontlog-normal) logs a 502 and a 404 but not a 200 on
    either path; `off` logs nothing. The log_line helper waits for the line it wants, so the
    lines that must be missing are checked after a logged one that came later."""
    _reload_with(own, 'access_log = "errors"')
    own.warm()
    c = Client(own.port)
    engine_ok, fast_ok, bad, unknown = uid("/len"), uid("/len"), uid("/bad-head"), uid("/nowhere")
    c.request(engine_ok, host="rr.localhost")           # a cold pool: the engine
    assert c.request(fast_ok)[0] == 200
    assert c.request(bad)[0] == 502
    assert c.request(unknown, host="unknown.localhost")[0] == 404
    assert own.router.log_line(bad)["status"] == "502" and own.router.log_line(unknown)["status"] == "404"
    assert own.router.markers(engine_ok) == ["FRESH"] and own.router.markers(fast_ok) == ["POOLED"]
    assert engine_ok not in own.router.output().replace(f"FRESH GET {engine_ok}", "")
    assert f'"GET {fast_ok} HTTP/1.1"' not in own.router.output()
    _reload_with(own, 'access_log = "off"')
    silent = uid("/bad-head")
    assert c.request(silent)[0] == 502
    _reload_with(own, 'access_log = "all"')
    last = uid("/len")
    assert c.request(last)[0] == 200
    own.router.log_line(last)
    c.close()
    assert f'"GET {silent} HTTP/1.1"' not in own.router.output()

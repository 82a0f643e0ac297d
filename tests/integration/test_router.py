"""mux-router as a real subprocess on ephemeral ports, in front of small in-test backends that run
on an asyncio loop in a thread: HTTP backends that answer with their name and echo what they got
(and record every byte), and a websockets echo server."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve

from frontgate import health_state, proxy_protocol
from tests.helpers import daemon_output, free_port, start_daemon, stop_daemon, wait_until

TIMEOUT = 10


# --------------------------------------------------------------------------- backends

class LoopThread:
    """An asyncio loop in a daemon thread; the tests are synchronous and call into it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)


class Backend:
    """HTTP/1.1 backend: answers every request with JSON naming itself and echoing the request
    line, headers and (de-chunked) body. Everything received is kept in `raw`."""

    def __init__(self, name: str, delay: float = 0.0):
        self.name = name
        self.port = 0                   # the kernel's pick at the first start (a port chosen earlier
                                        # can be taken meanwhile as some connection's source port)
        self.delay = delay
        self.raw = bytearray()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0            # TCP connections accepted: pooled reuse keeps this low
        self.requests = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]     # a restart binds the same one

    async def kill(self):
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.writers.add(writer)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as e:
                    self.raw += e.partial
                    return
                self.raw += head
                lines = head.decode("latin-1").split("\r\n")[:-2]
                headers = [line.split(": ", 1) for line in lines[1:]]
                lower = {n.lower(): v for n, v in headers}
                body = b""
                if "content-length" in lower:
                    body = await reader.readexactly(int(lower["content-length"]))
                    self.raw += body
                elif lower.get("transfer-encoding") == "chunked":
                    while True:
                        size_line = await reader.readuntil(b"\r\n")
                        self.raw += size_line
                        size = int(size_line.split(b";")[0], 16)
                        if size == 0:
                            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                                self.raw += line
                                headers.append(["trailer:" + line.decode().split(":")[0], ""])
                            self.raw += line
                            break
                        data = await reader.readexactly(size + 2)
                        self.raw += data
                        body += data[:-2]
                self.requests += 1
                if self.delay:
                    await asyncio.sleep(self.delay)
                if "sleep=" in lines[0]:            # GET /x?sleep=0.5: a slow answer on demand
                    await asyncio.sleep(float(lines[0].split("sleep=")[1].split()[0].split("&")[0]))
                out = json.dumps({"name": self.name, "request_line": lines[0], "headers": headers,
                                  "body": body.decode("latin-1")}).encode()
                close = "close" in lower.get("connection", "").lower()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (len(out), b"Connection: close\r\n" if close else b"", out))
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


class ScriptedBackend(Backend):
    """Answers with canned bytes chosen by the request path, then closes: response framing the
    JSON backend never produces, and broken responses."""

    SCRIPTS = {
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        "/until-close": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread me until the end",
        "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        "/garbage": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        "/not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
        "/silent": b"",
        "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
    }

    async def handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.raw += head
            path = head.split(b" ")[1].decode()
            writer.write(self.SCRIPTS[path])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class TunnelBackend(Backend):
    """Answers an upgrade with 101 and, in the same write, its first tunnel bytes; then plays the
    part its path names, keeping all it got after the head in `tunnel_bytes[path]`:
    /backend-half-closes: echoes what came, then shuts its sending side and reads on to the end;
    /client-half-closes: reads to the end, then answers with all it got and closes;
    /reset: aborts the connection at once."""

    def __init__(self, name: str):
        super().__init__(name)
        self.tunnel_bytes: dict[str, bytes] = {}

    async def handle(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                         b"hello-from-backend;")
            await writer.drain()
            got = b""
            if path == "/reset":
                writer.transport.abort()
                return
            if path == "/backend-half-closes":
                got = await reader.read(65536)
                writer.write(b"got:" + got)
                writer.write_eof()
            while data := await reader.read(65536):
                got += data
            if path == "/client-half-closes":
                writer.write(b"bye:" + got)
                await writer.drain()
            self.tunnel_bytes[path] = got
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def ws_echo(ws):
    async for message in ws:
        await ws.send(message)


# --------------------------------------------------------------------------- raw HTTP client

class RawClient:
    """One TCP connection; sends bytes and reads Content-Length responses."""

    def __init__(self, port: int, source: str = "127.0.0.1"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; got {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {n.lower(): v for n, v in (line.split(": ", 1) for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.buf) < length:
            if not self._fill():
                raise EOFError("connection closed in the body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def request(self, host: str, target: str = "/", extra: str = "", method: str = "GET"):
        self.send(f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        return self.response()

    def closed(self) -> bool:
        """True once the peer closed (EOF or reset) with nothing more to read."""
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def get(port: int, host: str, target: str = "/", extra: str = "", source: str = "127.0.0.1"):
    client = RawClient(port, source)
    try:
        status, headers, body = client.request(host, target, extra + "Connection: close\r\n")
    finally:
        client.close()
    return status, headers, (json.loads(body) if headers.get("content-type") == "application/json" else body)


def header_values(echo: dict, name: str) -> list[str]:
    return [v for n, v in echo["headers"] if n.lower() == name.lower()]


# --------------------------------------------------------------------------- the router under test

ROUTER_TOML = """
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "state/health.json"
state_stale_after = 60
trusted_sources = ["127.0.0.1/32"]
[listen.public]
address = "127.0.0.1:{public}"
[listen.from_terminator]
address = "127.0.0.1:{proxied}"
proxy_protocol = true
scheme = "https"
[timeouts]
http_request = 1
connect = 2
server = 5
[[redirect]]
listener = "public"
source_not_in = ["trusted"]
to_scheme = "https"
code = 301
[[app]]
name = "maps-api"
hosts = ["maps.localhost"]
path_prefix = "/api/"
servers = ["{api}"]
[[app]]
name = "maps"
hosts = ["maps.localhost"]
servers = ["{maps1}", "{maps2}"]
[[app]]
name = "coltrane"
hosts = ["coltrane.localhost", "*.coltrane.localhost"]
servers = ["{coltrane}"]
[[app]]
name = "certified"
hosts = ["certified.localhost"]
client_ca = "clients-ca.pem"
client_cert = "optional"
servers = ["{coltrane}"]
[[app]]
name = "flaky0"
hosts = ["flaky0.localhost"]
retries = 0
servers = ["{victim}", "{survivor}"]
[[app]]
name = "flaky"
hosts = ["flaky.localhost"]
servers = ["{victim}", "{survivor}"]
[[app]]
name = "health"
hosts = ["health.localhost"]
servers = ["{h1}", "{h2}"]
[[app]]
name = "scripted"
hosts = ["scripted.localhost"]
servers = ["{scripted}"]
[[app]]
name = "ws"
hosts = ["ws.localhost"]
servers = ["127.0.0.1:{ws}"]
[[app]]
name = "tunnel"
hosts = ["tunnel.localhost"]
servers = ["{tunnel}"]
"""


class Env:
    def __init__(self, tmp: Path):
        self.dir = tmp
        self.loop = LoopThread()
        self.backends = {name: Backend(name) for name in
                         ("api", "maps1", "maps2", "coltrane", "victim", "survivor", "h1", "h2")}
        self.backends["scripted"] = ScriptedBackend("scripted")
        self.backends["tunnel"] = TunnelBackend("tunnel")
        self.ws_port = free_port()
        self.public, self.proxied = free_port(), free_port()
        self.state_file = tmp / "state" / "health.json"
        self.state_file.parent.mkdir()
        self.config = tmp / "mux-router.toml"
        self.proc = None
        self.ws_server = None

    def start(self):
        for b in self.backends.values():
            self.loop.run(b.start())
        self.ws_server = self.loop.run(self._start_ws())
        (self.dir / "clients-ca.pem").write_text("the router only needs the file to exist\n")
        self.config.write_text(ROUTER_TOML.format(public=self.public, proxied=self.proxied, ws=self.ws_port,
                                                  **{n: b.address for n, b in self.backends.items()}))
        self.proc = start_daemon(["mux-router", "--config", str(self.config)], wait_for=("127.0.0.1", self.public))
        wait_until(lambda: _accepts(self.proxied), what="PROXY listener up")

    async def _start_ws(self):
        return await ws_serve(ws_echo, "127.0.0.1", self.ws_port)   # needs the running loop

    def stop(self) -> str:
        out = stop_daemon(self.proc) if self.proc else ""
        if self.ws_server is not None:
            self.loop.loop.call_soon_threadsafe(self.ws_server.close)
        for b in self.backends.values():
            if b.server is not None:
                self.loop.run(b.kill())
        self.loop.stop()
        return out

    def total_received(self) -> int:
        return sum(len(b.raw) for b in self.backends.values())

    def write_state(self, states: dict[str, str]):
        now = time.time()
        servers = {f"health/{self.backends[name].address}": health_state.ServerState(
            state=state, since=now, last_check={"ok": state == "up", "took_ms": 1.0, "detail": "test"})
            for name, state in states.items()}
        health_state.write_atomic(self.state_file, health_state.HealthState(
            generation=int(now * 1000), written_at=now, checker_pid=1, servers=servers))


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def running(e):
    """Start an environment for a module's tests; stop it after them, and fail on any traceback."""
    try:
        e.start()
        yield e
    finally:
        out = e.stop()
    assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from running(Env(tmp_path_factory.mktemp("router")))


# --------------------------------------------------------------------------- routing

def test_routes_by_exact_host_wildcard_and_path_prefix(env):
    assert get(env.public, "maps.localhost", "/api/v1?x=1")[2]["name"] == "api"
    assert get(env.public, "maps.localhost", "/apiary")[2]["name"] in ("maps1", "maps2")
    assert get(env.public, "coltrane.localhost")[2]["name"] == "coltrane"
    assert get(env.public, "a.coltrane.localhost")[2]["name"] == "coltrane"
    assert get(env.public, "a.b.coltrane.localhost")[0] == 404        # "*." is one label
    assert get(env.public, "COLTRANE.localhost:8080")[2]["name"] == "coltrane"
    status, _, echo = get(env.public, "maps.localhost", "/api/v1?x=1")
    assert status == 200 and echo["request_line"] == "GET /api/v1?x=1 HTTP/1.1"


def test_unknown_host_and_path_is_404(env):
    for host in ("nobody.localhost", "coltrane.localhost.evil", "xcoltrane.localhost"):
        status, headers, body = get(env.public, host)
        assert status == 404 and body.startswith(b"404 Not Found"), (host, body)
        assert int(headers["content-length"]) == len(body)


def test_malformed_requests_are_400_and_never_forwarded(env):
    before = env.total_received()
    bad = [
        b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nx",
        b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nHost: coltrane.localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : maps.localhost\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: maps.localhost\r\n\r\n",
        # Request smuggling (RFC 9112 6.3, 11.2): anything two parsers could frame differently.
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nContent-Length: 5, 6\r\n\r\nabcdef",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nContent-Length: +5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: maps.localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: maps.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nX-A: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nX(A): b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nX-A: \x00\r\n\r\n",
        b"GET / HTTP/1.1\nHost: maps.localhost\n\n",
        # A PROXY v2 header where none is expected is just a bad request.
        proxy_protocol.encode(proxy_protocol.ProxyHeader(family="TCP4", src=("1.2.3.4", 1), dst=("5.6.7.8", 2)))
        + b"GET / HTTP/1.1\r\nHost: maps.localhost\r\n\r\n",
    ]
    for raw in bad:
        client = RawClient(env.public)
        client.send(raw)
        status, headers, _ = client.response()
        # A well-formed but unsupported coding ("gzip, chunked" would be) is 501; the rest 400.
        assert status in ((400, 501) if b"gzip" in raw else (400,)) and headers["connection"] == "close", raw
        assert client.closed()
        client.close()
    client = RawClient(env.public)
    client.send(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n")
    assert client.response()[0] == 414
    client.close()
    client = RawClient(env.public)
    client.send(b"GET / HTTP/2.0\r\nHost: maps.localhost\r\n\r\n")
    assert client.response()[0] == 505
    client.close()
    assert env.total_received() == before


@pytest.mark.parametrize("bad_chunk", [b"zz\r\n", b"5;a=\"x\r\n", b"5\nhello\r\n", b"5 \r\nhello\r\n",
                                       b"3\r\nhello\r\n", b"10000000000000000\r\n"])
def test_invalid_chunked_body_is_400_and_the_bad_bytes_never_reach_the_backend(env, bad_chunk):
    backend = env.backends["coltrane"]
    mark = len(backend.raw)
    client = RawClient(env.public)
    client.send(b"POST /c HTTP/1.1\r\nHost: coltrane.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n" + bad_chunk)
    status, headers, _ = client.response()
    assert status == 400 and headers["connection"] == "close"
    client.close()
    received = bytes(backend.raw[mark:])
    # The head and the good chunk may have gone ahead; the backend saw the connection cut there.
    assert bad_chunk not in received and bad_chunk.strip() not in received.split(b"3\r\nabc\r\n")[-1]


def test_slow_request_head_is_408(env):
    client = RawClient(env.public)
    client.send(b"GET / HTTP/1.1\r\nHost: maps")
    started = time.monotonic()
    status, headers, _ = client.response()
    assert status == 408 and headers["connection"] == "close"
    assert 0.8 < time.monotonic() - started < 5
    client.close()


def test_redirects_untrusted_source_and_routes_trusted(env):
    status, headers, _ = get(env.public, "maps.localhost", "/a?b=1", source="127.0.0.2")
    assert status == 301 and headers["location"] == "https://maps.localhost/a?b=1"
    status, _, echo = get(env.public, "maps.localhost", "/a?b=1", source="127.0.0.1")
    assert status == 200 and echo["name"] in ("maps1", "maps2")


# --------------------------------------------------------------------------- forwarding headers

def test_forwarded_headers_on_the_public_listener(env):
    # From a trusted source, an X-Forwarded-For is extended; the proto is always the listener's.
    _, _, echo = get(env.public, "coltrane.localhost", extra="X-Forwarded-For: 10.9.8.7\r\nX-Forwarded-Proto: https\r\n")
    assert header_values(echo, "X-Forwarded-For") == ["10.9.8.7, 127.0.0.1"]
    assert header_values(echo, "X-Forwarded-Proto") == ["http"]
    assert header_values(echo, "Connection") == ["keep-alive"]        # backend connections are pooled


def test_proxy_v2_listener_takes_client_address_and_scheme_from_the_header(env):
    header = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("203.0.113.7", 40000), dst=("127.0.0.1", 443),
        authority="coltrane.localhost", tls_version="TLSv1.3"))
    client = RawClient(env.proxied)
    # The forged X-Forwarded-For comes from an untrusted client (203.0.113.7): replaced.
    client.send(header + b"GET /x HTTP/1.1\r\nHost: coltrane.localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
    status, _, body = client.response()
    echo = json.loads(body)
    assert status == 200 and echo["name"] == "coltrane"
    assert header_values(echo, "X-Forwarded-For") == ["203.0.113.7"]
    assert header_values(echo, "X-Forwarded-Proto") == ["https"]
    # Keep-alive after the PROXY header: the next request on the same connection is routed too.
    status, _, body = client.request("coltrane.localhost.", "/api/")
    assert status == 200 and json.loads(body)["name"] == "coltrane"
    client.close()
    # The redirect rule is for the public listener only: this client is not redirected.
    out = daemon_output(env.proc)
    assert "203.0.113.7:40000 [" in out and "] from_terminator coltrane/127.0.0.1:" in out


def test_proxy_v2_host_other_than_the_sni_is_421_and_not_forwarded(env):
    header = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("203.0.113.8", 40000), dst=("127.0.0.1", 443),
        authority="Coltrane.Localhost", tls_version="TLSv1.3"))
    client = RawClient(env.proxied)
    client.send(header)
    # The same name in another case, with a port and a trailing dot, is the same host.
    assert client.request("coltrane.localhost.:443", "/")[0] == 200
    before = env.total_received()
    status, headers, body = client.request("maps.localhost", "/api/")
    assert status == 421 and headers["connection"] == "close" and b"421 Misdirected Request" in body
    assert client.closed()
    client.close()
    # Absolute form names the host too.
    client = RawClient(env.proxied)
    client.send(header + b"GET http://maps.localhost/api/ HTTP/1.1\r\nHost: maps.localhost\r\n\r\n")
    assert client.response()[0] == 421
    client.close()
    assert env.total_received() == before
    # Without an SNI there is nothing to compare.
    bare = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("203.0.113.8", 40001), dst=("127.0.0.1", 443)))
    client = RawClient(env.proxied)
    client.send(bare)
    assert client.request("coltrane.localhost")[0] == 200
    assert json.loads(client.request("maps.localhost", "/api/")[2])["name"] == "api"
    client.close()


def test_client_cert_subject_comes_only_from_the_proxy_header(env):
    def echo(header: bytes, port: int, host: str = "certified.localhost") -> dict:
        client = RawClient(port)
        client.send(header)
        status, _, body = client.request(host, "/", "X-Client-Cert-Subject: forged\r\nConnection: close\r\n")
        client.close()
        assert status == 200
        return json.loads(body)
    with_cert = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("203.0.113.9", 40000), dst=("127.0.0.1", 443),
        authority="certified.localhost", tls_version="TLSv1.3", client_cert_subject="alice"))
    assert header_values(echo(with_cert, env.proxied), "X-Client-Cert-Subject") == ["alice"]
    # Only the app that declares client_ca hears of the certificate (sni_host_check aside).
    other_app = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("203.0.113.9", 40000), dst=("127.0.0.1", 443),
        authority="coltrane.localhost", tls_version="TLSv1.3", client_cert_subject="alice"))
    assert header_values(echo(other_app, env.proxied, "coltrane.localhost"), "X-Client-Cert-Subject") == []
    without = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("127.0.0.1", 40000), dst=("127.0.0.1", 443),
        authority="certified.localhost", tls_version="TLSv1.3"))
    assert header_values(echo(without, env.proxied), "X-Client-Cert-Subject") == []
    # The public listener, from a trusted source: dropped all the same.
    assert header_values(echo(b"", env.public), "X-Client-Cert-Subject") == []


def test_proxy_v2_listener_refuses_untrusted_sources_and_requests_without_header(env):
    before = env.total_received()
    header = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("198.51.100.1", 1), dst=("127.0.0.1", 443)))
    client = RawClient(env.proxied, source="127.0.0.2")
    try:
        client.send(header + b"GET / HTTP/1.1\r\nHost: coltrane.localhost\r\n\r\n")
    except ConnectionError:
        pass
    assert client.closed() and client.buf == b""
    client.close()
    client = RawClient(env.proxied)
    client.send(b"GET / HTTP/1.1\r\nHost: coltrane.localhost\r\n\r\n")
    assert client.response()[0] == 400
    client.close()
    assert env.total_received() == before


# --------------------------------------------------------------------------- balancing, failures, health

def test_roundrobin_across_two_servers(env):
    names = [get(env.public, "maps.localhost", "/")[2]["name"] for _ in range(10)]
    assert names.count("maps1") == 5 and names.count("maps2") == 5
    assert all(a != b for a, b in zip(names, names[1:])), names


def test_killed_server_502_without_retries_and_retried_elsewhere_with_them(env):
    assert {get(env.public, "flaky.localhost")[2]["name"] for _ in range(2)} == {"victim", "survivor"}
    env.loop.run(env.backends["victim"].kill())
    statuses = [get(env.public, "flaky0.localhost")[0] for _ in range(4)]
    assert sorted(statuses) == [200, 200, 502, 502], statuses
    results = [get(env.public, "flaky.localhost") for _ in range(4)]
    assert [(s, e["name"]) for s, _, e in results] == [(200, "survivor")] * 4


def test_servers_marked_down_get_no_traffic_and_all_down_is_503(env):
    assert {get(env.public, "health.localhost")[2]["name"] for _ in range(2)} == {"h1", "h2"}
    env.write_state({"h1": "down", "h2": "up"})
    time.sleep(1.2)     # the router polls the state file every 0.5 s
    assert [get(env.public, "health.localhost")[2]["name"] for _ in range(6)] == ["h2"] * 6
    env.write_state({"h1": "down", "h2": "down"})
    time.sleep(1.2)
    status, headers, body = get(env.public, "health.localhost")
    assert status == 503 and body.startswith(b"503 Service Unavailable")
    env.write_state({"h1": "up", "h2": "up"})
    time.sleep(1.2)
    assert {get(env.public, "health.localhost")[2]["name"] for _ in range(4)} == {"h1", "h2"}


# --------------------------------------------------------------------------- bodies, keep-alive, websocket

def test_chunked_request_body_is_forwarded(env):
    backend = env.backends["coltrane"]
    chunked = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Checksum: 42\r\n\r\n"
    client = RawClient(env.public)
    client.send(b"POST /upload HTTP/1.1\r\nHost: coltrane.localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    mark = len(backend.raw)
    for i in range(0, len(chunked), 7):     # in pieces, as a slow client would
        client.send(chunked[i:i + 7])
        time.sleep(0.01)
    status, _, body = client.response()
    echo = json.loads(body)
    assert status == 200 and echo["body"] == "hello, world"
    assert header_values(echo, "Transfer-Encoding") == ["chunked"] and "trailer:X-Checksum" in [n for n, _ in echo["headers"]]
    assert bytes(backend.raw[mark:]).endswith(chunked)
    # The connection stays usable: the body's end was found exactly.
    assert json.loads(client.request("coltrane.localhost")[2])["name"] == "coltrane"
    client.close()


def test_content_length_body_and_large_body_stream(env):
    payload = b"x" * 3_000_000
    client = RawClient(env.public)
    client.send(b"PUT /big HTTP/1.1\r\nHost: coltrane.localhost\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    status, _, body = client.response()
    assert status == 200 and len(json.loads(body)["body"]) == len(payload)
    client.close()


def test_keep_alive_two_requests_to_two_apps_on_one_connection(env):
    client = RawClient(env.public)
    s1, h1, b1 = client.request("maps.localhost", "/api/one")
    s2, h2, b2 = client.request("coltrane.localhost", "/two")
    assert (s1, json.loads(b1)["name"]) == (200, "api") and (s2, json.loads(b2)["name"]) == (200, "coltrane")
    assert "connection" not in h1 and "connection" not in h2
    # Pipelined, and a 404 in between does not break the connection either.
    client.send(b"GET /p1 HTTP/1.1\r\nHost: coltrane.localhost\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: nobody.localhost\r\n\r\n"
                b"GET /p3 HTTP/1.1\r\nHost: maps.localhost\r\nConnection: close\r\n\r\n")
    first, second, third = client.response(), client.response(), client.response()
    assert json.loads(first[2])["request_line"] == "GET /p1 HTTP/1.1"
    assert second[0] == 404
    assert third[0] == 200 and third[1]["connection"] == "close"
    assert client.closed()
    client.close()


def test_websocket_upgrade_is_tunnelled(env):
    async def talk():
        sock = socket.create_connection(("127.0.0.1", env.public))
        async with ws_connect(f"ws://ws.localhost:{env.public}/echo", sock=sock, open_timeout=TIMEOUT) as ws:
            replies = []
            for message in ["hello", "x" * 200_000, b"\x00\x01binary"]:
                await ws.send(message)
                replies.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
            return replies
    assert asyncio.run(talk()) == ["hello", "x" * 200_000, b"\x00\x01binary"]


UPGRADE = (b"GET {path} HTTP/1.1\r\nHost: tunnel.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def read_until_eof(client: RawClient) -> bytes:
    while client._fill():
        pass
    data, client.buf = client.buf, b""
    return data


def test_tunnel_carries_early_bytes_and_a_half_close_from_the_backend(env):
    """Bytes the client sent right behind its upgrade request and bytes the backend sent right
    behind its 101 both get through; the backend's half-close reaches the client, which can
    still send until it closes too."""
    client = RawClient(env.public)
    client.send(UPGRADE.replace(b"{path}", b"/backend-half-closes") + b"early;")
    assert client.response()[0] == 101
    assert read_until_eof(client) == b"hello-from-backend;got:early;"
    client.send(b"after-eof;")
    client.sock.shutdown(socket.SHUT_WR)
    backend = env.backends["tunnel"]
    got = wait_until(lambda: backend.tunnel_bytes.get("/backend-half-closes"), what="the backend's end of the tunnel")
    assert got == b"early;after-eof;"
    assert client.closed()
    client.close()
    fields = parse_httplog(log_lines(env.proc, '"GET /backend-half-closes HTTP/1.1"')[-1])
    assert (fields["status"], fields["backend"], fields["term"]) == ("101", "tunnel", "--")


def test_tunnel_carries_a_half_close_from_the_client(env):
    client = RawClient(env.public)
    client.send(UPGRADE.replace(b"{path}", b"/client-half-closes"))
    assert client.response()[0] == 101
    client.send(b"one;")
    client.send(b"two;")
    client.sock.shutdown(socket.SHUT_WR)
    assert read_until_eof(client) == b"hello-from-backend;bye:one;two;"
    client.close()


def test_tunnel_reset_by_the_backend_closes_the_client_and_the_router_carries_on(env):
    client = RawClient(env.public)
    client.send(UPGRADE.replace(b"{path}", b"/reset"))
    assert client.response()[0] == 101
    wait_until(client.closed, what="the client connection closed")
    client.close()
    assert get(env.public, "coltrane.localhost", "/after-reset")[0] == 200


HTTPLOG_RE = re.compile(
    r'(?P<ip>[0-9a-f.:]+):(?P<port>\d+) \[(?P<date>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] '
    r'(?P<frontend>\S+) (?P<backend>[^/ ]+)/(?P<server>\S+) '
    r'(?P<Tq>-?\d+)/(?P<Tw>-?\d+)/(?P<Tc>-?\d+)/(?P<Tr>-?\d+)/(?P<Tt>\d+) (?P<status>\d{3}) (?P<bytes>\d+) '
    r'- - (?P<term>\S\S) (?P<conns>\d+/\d+/\d+/\d+/\d+) (?P<queues>\d+/\d+) "(?P<request>[^"]*)"')


def parse_httplog(line: str) -> dict:
    m = HTTPLOG_RE.match(line)
    assert m, line
    return m.groupdict()


def log_lines(proc, marker: str) -> list[str]:
    return wait_until(lambda: [l for l in daemon_output(proc).splitlines() if marker in l], what="access log line")


def test_access_log_line_per_request(env):
    status, _, echo = get(env.public, "coltrane.localhost", "/logged?q=1")
    fields = parse_httplog(log_lines(env.proc, '"GET /logged?q=1 HTTP/1.1"')[-1])
    assert fields["ip"] == "127.0.0.1" and fields["frontend"] == "public"
    assert (fields["backend"], fields["server"]) == ("coltrane", env.backends["coltrane"].address)
    assert fields["status"] == "200" and int(fields["bytes"]) > 0 and fields["term"] == "--"
    assert all(int(fields[t]) >= 0 for t in ("Tq", "Tw", "Tc", "Tr")) and int(fields["Tt"]) >= int(fields["Tr"])
    # Requests that never reach a backend are logged with -1 for the phases not reached.
    get(env.public, "nobody.localhost", "/nobody-logged")
    fields = parse_httplog(log_lines(env.proc, '"GET /nobody-logged HTTP/1.1"')[-1])
    assert fields["status"] == "404" and fields["Tc"] == "-1" and fields["term"] == "PR"


def test_response_framing_is_followed(env):
    client = RawClient(env.public)
    # Chunked: passed on as it is; the backend's "Connection: close" is its own business.
    client.send(b"GET /chunked HTTP/1.1\r\nHost: scripted.localhost\r\n\r\n")
    wait_until(lambda: client._fill() and b"0\r\nX-T: 1\r\n\r\n" in client.buf, what="chunked response")
    head, _, body = client.buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
    assert b"Connection" not in head
    assert body == b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    client.buf = b""
    # ... and the client's connection carries on: 100 Continue is passed, then the final response.
    client.send(b"POST /continue HTTP/1.1\r\nHost: scripted.localhost\r\nExpect: 100-continue\r\n"
                b"Content-Length: 0\r\n\r\n")
    while b"ok" not in client.buf:
        assert client._fill()
    assert client.buf == b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    client.buf = b""
    # HEAD: no body whatever Content-Length says.
    client.send(b"HEAD /head HTTP/1.1\r\nHost: scripted.localhost\r\n\r\n")
    while b"\r\n\r\n" not in client.buf:
        assert client._fill()
    assert client.buf == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    client.buf = b""
    # Close-delimited: the client is told, gets everything, then the connection ends.
    client.send(b"GET /until-close HTTP/1.1\r\nHost: scripted.localhost\r\n\r\n")
    while not client.closed():
        pass
    assert client.buf.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in client.buf
    assert client.buf.endswith(b"\r\n\r\nread me until the end")
    client.close()


@pytest.mark.parametrize("path", ["/garbage", "/not-http", "/silent"])
def test_broken_backend_responses_are_502(env, path):
    status, _, body = get(env.public, "scripted.localhost", path)
    assert status == 502 and body.startswith(b"502 Bad Gateway")


# --------------------------------------------------------------------------- reload and shutdown

SMALL_GRACE = 2.0

SMALL_TOML = """
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "health.json"
grace = 2
[listen.public]
address = "127.0.0.1:{port}"
[[app]]
name = "{name}"
hosts = ["{host}"]
servers = ["{backend}"]
"""


@pytest.fixture
def small_router(tmp_path):
    loop = LoopThread()
    backend = Backend("slow", delay=1.0)
    loop.run(backend.start())
    port = free_port()
    config = tmp_path / "mux-router.toml"
    config.write_text(SMALL_TOML.format(port=port, name="one", host="one.localhost", backend=backend.address))
    proc = start_daemon(["mux-router", "--config", str(config)], wait_for=("127.0.0.1", port))
    try:
        yield proc, port, config, backend
    finally:
        stop_daemon(proc)
        loop.run(backend.kill())
        loop.stop()


def test_sighup_reloads_and_keeps_the_old_config_on_error(small_router):
    proc, port, config, backend = small_router
    assert get(port, "one.localhost")[0] == 200
    config.write_text(SMALL_TOML.format(port=port, name="two", host="two.localhost", backend=backend.address))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in daemon_output(proc), what="reload logged")
    assert get(port, "two.localhost")[0] == 200 and get(port, "one.localhost")[0] == 404
    config.write_text(config.read_text() + "\nbogus = 1\n")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed, keeping the running config" in daemon_output(proc), what="error logged")
    assert get(port, "two.localhost")[0] == 200
    assert proc.poll() is None


def keep_alive_client(port: int) -> RawClient:
    """A connection that has had its answer and now sits idle between requests."""
    client = RawClient(port)
    assert client.request("one.localhost")[0] == 200
    return client


def test_sigterm_finishes_in_flight_requests_then_exits_0(small_router):
    proc, port, config, backend = small_router
    idle = keep_alive_client(port)                 # an idle keep-alive connection is simply closed
    never_asked = RawClient(port)                  # and so is one that never sent a byte
    client = RawClient(port)
    client.send(b"GET /slow HTTP/1.1\r\nHost: one.localhost\r\n\r\n")
    wait_until(lambda: b"GET /slow" in backend.raw, what="request reached the backend")   # it sleeps 1 s on it
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert idle.closed() and never_asked.closed()
    assert time.monotonic() - sent < 0.5           # at once, not after the in-flight request
    status, headers, body = client.response()
    assert status == 200 and json.loads(body)["name"] == "slow"
    assert proc.wait(TIMEOUT) == 0
    assert time.monotonic() - sent < SMALL_GRACE   # right after the request, not at the end of the grace
    assert not _accepts(port)
    for c in (client, idle, never_asked):
        c.close()


def test_sigterm_with_only_idle_keep_alive_clients_exits_at_once(small_router):
    proc, port, config, backend = small_router
    idle = [keep_alive_client(port) for _ in range(3)]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert time.monotonic() - sent < SMALL_GRACE / 2
    assert all(c.closed() for c in idle)
    for c in idle:
        c.close()


def test_sigterm_keeps_a_relayed_connection_whose_request_is_on_its_way(tmp_path):
    """The terminator sends the PROXY header as its client's handshake ends, the request a moment
    later: a shutdown in between waits for that request (closing would drop it: a fresh client
    does not retry)."""
    loop = LoopThread()
    backend = Backend("one")
    loop.run(backend.start())
    port = free_port()
    config = tmp_path / "mux-router.toml"
    config.write_text(SMALL_TOML.format(port=port, name="one", host="one.localhost", backend=backend.address)
                      .replace('grace = 2', 'grace = 2\ntrusted_sources = ["127.0.0.1/32"]')
                      .replace('address = "127.0.0.1:%d"' % port, 'address = "127.0.0.1:%d"\nproxy_protocol = true' % port))
    proc = start_daemon(["mux-router", "--config", str(config)], wait_for=("127.0.0.1", port))
    try:
        client = RawClient(port)
        client.send(proxy_protocol.encode(proxy_protocol.ProxyHeader(
            command="PROXY", family="TCP4", src=("203.0.113.7", 40000), dst=("127.0.0.1", 443))))
        time.sleep(0.2)     # the router reads the header (nothing shows it; a slow one only weakens the test)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not _accepts(port), what="the listener closed")
        client.send(b"GET / HTTP/1.1\r\nHost: one.localhost\r\n\r\n")
        status, headers, body = client.response()
        assert status == 200 and headers.get("connection") == "close"
        assert proc.wait(TIMEOUT) == 0
        client.close()
    finally:
        stop_daemon(proc)
        loop.run(backend.kill())
        loop.stop()


def test_sigterm_cuts_a_request_still_running_when_the_grace_from_the_toml_ends(small_router):
    proc, port, config, backend = small_router
    client = RawClient(port)
    client.send(b"GET /slower?sleep=5 HTTP/1.1\r\nHost: one.localhost\r\n\r\n")   # 1 s + 5 s
    wait_until(lambda: b"GET /slower" in backend.raw, what="request reached the backend")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert SMALL_GRACE - 0.2 < time.monotonic() - sent < SMALL_GRACE + 1.5
    assert client.closed()
    client.close()


# =========================================================================== a second router: features
# Pooling, every timeout, balancers, maxconn and the queue, retries and passive health, ACLs,
# header rules, forwarding fields, routing by regex/header/default, error pages, JSON access log,
# streaming with bounded memory. Small timeouts keep it fast.

class StreamBackend(Backend):
    """/sink: reads a Content-Length body in pieces (never whole) and answers with its size;
    /download?n=N: sends N bytes with a Content-Length."""

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                lower = {n.lower(): v for n, v in (line.split(": ", 1) for line in lines[1:] if line)}
                if target.startswith("/sink"):
                    remaining, got = int(lower.get("content-length", 0)), 0
                    while remaining:
                        data = await reader.read(min(remaining, 1 << 20))
                        if not data:
                            return
                        remaining -= len(data)
                        got += len(data)
                    body = str(got).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    n = int(target.split("n=")[1])
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                    piece = b"x" * (1 << 20)
                    while n:
                        writer.write(piece[:min(n, len(piece))])
                        n -= min(n, len(piece))
                        await writer.drain()
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


class UpgradeBackend(Backend):
    """Answers an upgrade with 101, then only reads (a silent WebSocket peer)."""

    async def handle(self, reader, writer):
        try:
            self.raw += await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            await writer.drain()
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: further connects hang (SYNs dropped)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.connect(s.getsockname())
        fillers.append(c)
    return s, fillers


FEATURES_TOML = """
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "state/health.json"
state_stale_after = 60
trusted_sources = ["127.0.0.1/32"]
access_log_format = "json"
forwarded_for = "replace"
forwarded = true
retry_after = 7
[listen.public]
address = "127.0.0.1:{public}"
[timeouts]
http_request = 1
client = 1
connect = 0.5
server = 1
tunnel = 1
keep_alive = 0.6
queue = 0.75
[[app]]
name = "pool"
hosts = ["pool.localhost"]
servers = ["{pool}"]
[[app]]
name = "limited"
hosts = ["limited.localhost"]
max_body = 1000
servers = ["{limited}"]
[[app]]
name = "blackhole"
hosts = ["blackhole.localhost"]
retries = 0
passive_fall = 0
servers = ["{blackhole}"]
[[app]]
name = "queued"
hosts = ["queued.localhost"]
servers = [{{ address = "{queued}", maxconn = 1 }}]
error_pages = {{ 503 = "busy.html" }}
[[app]]
name = "lc"
hosts = ["lc.localhost"]
balance = "leastconn"
servers = ["{lc1}", "{lc2}"]
[[app]]
name = "src"
hosts = ["src.localhost"]
balance = "source"
servers = ["{s1}", "{s2}", "{s3}"]
[[app]]
name = "uri"
hosts = ["uri.localhost"]
balance = "uri"
servers = ["{u1}", "{u2}", "{u3}"]
[[app]]
name = "retry"
hosts = ["retry.localhost"]
retries = 1
passive_fall = 2
servers = ["{refused}", "{good}"]
[[app]]
name = "sticky"
hosts = ["sticky.localhost"]
retries = 1
redispatch = false
passive_fall = 0
servers = ["{refused2}", "{good}"]
[[app]]
name = "acl"
hosts = ["acl.localhost"]
acl = [{{ path_prefix = "/admin", allow = ["127.0.0.2/32"] }}, {{ deny = ["127.0.0.3/32"] }}]
request_headers = {{ set = {{ X-App = "acl" }}, add = {{ X-Tag = "t" }}, delete = ["X-Debug"] }}
response_headers = {{ set = {{ X-Served-By = "frontgate" }}, delete = ["Content-Type"] }}
servers = ["{acl}"]
[[app]]
name = "beta"
hosts = ["route.localhost"]
header = {{ name = "X-Env", regex = "^beta$" }}
servers = ["{beta}"]
[[app]]
name = "fallback"
default = true
servers = ["{fallback}"]
[[app]]
name = "tiles"
host_regex = "tiles[0-9]+\\\\.localhost"
servers = ["{tiles}"]
[[app]]
name = "images"
hosts = ["route.localhost"]
path_regex = "\\\\.png$"
servers = ["{images}"]
[[app]]
name = "stream"
hosts = ["stream.localhost"]
servers = ["{stream}"]
[[app]]
name = "upgrade"
hosts = ["upgrade.localhost"]
servers = ["{upgrade}"]
"""

FEATURE_BACKENDS = ("pool", "limited", "slow", "queued", "lc1", "lc2", "s1", "s2", "s3", "u1", "u2", "u3",
                    "good", "acl", "beta", "fallback", "tiles", "images")


class FeatureEnv:
    def __init__(self, tmp: Path):
        self.dir = tmp
        # The blackhole's connects take source ports: before any port is picked for a listener.
        self.hole, self.fillers = blackhole()
        self.loop = LoopThread()
        self.backends = {name: Backend(name, delay=0.5 if name == "queued" else 0.0) for name in FEATURE_BACKENDS}
        self.backends["stream"] = StreamBackend("stream")
        self.backends["upgrade"] = UpgradeBackend("upgrade")
        self.refused_port = free_port()          # nothing listens there (until a test starts it)
        self.refused2_port = free_port()
        self.public = free_port()
        self.state_file = tmp / "state" / "health.json"
        self.state_file.parent.mkdir()
        (tmp / "busy.html").write_text("<h1>busy, come back later</h1>")
        self.config = tmp / "mux-router.toml"
        self.proc = None

    def start(self):
        for b in self.backends.values():
            self.loop.run(b.start())
        addresses = {n: b.address for n, b in self.backends.items()}
        self.config.write_text(FEATURES_TOML.format(
            public=self.public, refused=f"127.0.0.1:{self.refused_port}",
            refused2=f"127.0.0.1:{self.refused2_port}",
            blackhole="127.0.0.1:%d" % self.hole.getsockname()[1], **addresses))
        self.proc = start_daemon(["mux-router", "--config", str(self.config)], wait_for=("127.0.0.1", self.public))

    def stop(self) -> str:
        out = stop_daemon(self.proc) if self.proc else ""
        for b in self.backends.values():
            if b.server is not None:
                self.loop.run(b.kill())
        self.loop.stop()
        for s in [self.hole, *self.fillers]:
            s.close()
        return out

    def write_state(self, states: dict[str, tuple[str, float]]):
        """{"app/host:port": (state, since)}"""
        now = time.time()
        servers = {key: health_state.ServerState(state=state, since=since,
                                                 last_check={"ok": state == "up", "took_ms": 1.0, "detail": "test"})
                   for key, (state, since) in states.items()}
        health_state.write_atomic(self.state_file, health_state.HealthState(
            generation=int(now * 1000), written_at=now, checker_pid=1, servers=servers))

    def json_log(self, marker: str) -> list[dict]:
        return [json.loads(line) for line in log_lines(self.proc, marker)]


@pytest.fixture(scope="module")
def fenv(tmp_path_factory):
    yield from running(FeatureEnv(tmp_path_factory.mktemp("features")))


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


# --------------------------------------------------------------------------- persistent connections

def test_backend_connections_are_pooled_and_reused(fenv):
    backend = fenv.backends["pool"]
    before = backend.connections
    for i in range(5):                    # five client connections, one after another
        status, _, echo = get(fenv.public, "pool.localhost", f"/p{i}")
        assert status == 200 and echo["name"] == "pool"
    client = RawClient(fenv.public)       # and keep-alive requests on one client connection
    for i in range(5):
        assert client.request("pool.localhost", f"/k{i}")[0] == 200
    client.close()
    assert backend.connections - before == 1
    # Past keep_alive an idle pooled connection is dropped, and a new one opened.
    time.sleep(1.2)
    assert get(fenv.public, "pool.localhost", "/after-idle")[0] == 200
    assert backend.connections - before == 2


def test_a_pooled_connection_closed_by_the_server_is_replaced_transparently(fenv):
    backend = fenv.backends["pool"]
    assert get(fenv.public, "pool.localhost", "/warm")[0] == 200
    async def drop_idle():                # the server drops its idle keep-alive connections
        for w in list(backend.writers):
            w.transport.abort()
    fenv.loop.run(drop_idle())
    time.sleep(0.05)
    for i in range(3):
        status, _, echo = get(fenv.public, "pool.localhost", f"/again{i}")
        assert status == 200 and echo["request_line"] == f"GET /again{i} HTTP/1.1"


def test_hop_by_hop_fields_are_not_forwarded(fenv):
    _, _, echo = get(fenv.public, "pool.localhost", "/hop",
                     extra="Connection: X-Private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
                           "Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\n")
    names = {n.lower() for n, _ in echo["headers"]}
    assert not names & {"x-private", "keep-alive", "te", "proxy-connection", "upgrade"}
    assert header_values(echo, "Connection") == ["keep-alive"]


# --------------------------------------------------------------------------- limits

def test_body_over_the_apps_max_body_is_413_and_never_forwarded(fenv):
    backend = fenv.backends["limited"]
    mark = len(backend.raw)
    client = RawClient(fenv.public)
    client.send(b"POST /up HTTP/1.1\r\nHost: limited.localhost\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n")
    status, headers, _ = client.response()           # at once: no 100 Continue, no body read
    assert status == 413 and headers["connection"] == "close"
    client.close()
    assert len(backend.raw) == mark
    # Within the limit: fine, and chunked bodies are counted as they pass.
    client = RawClient(fenv.public)
    client.send(b"POST /up HTTP/1.1\r\nHost: limited.localhost\r\nContent-Length: 1000\r\n\r\n" + b"a" * 1000)
    assert client.response()[0] == 200
    client.send(b"POST /up HTTP/1.1\r\nHost: limited.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3e8\r\n" + b"b" * 1000 + b"\r\n10\r\n" + b"c" * 16 + b"\r\n0\r\n\r\n")
    status, headers, _ = client.response()
    assert status == 413 and headers["connection"] == "close"
    client.close()
    assert b"c" * 16 not in backend.raw


# --------------------------------------------------------------------------- timeouts

def test_timeout_keep_alive_closes_an_idle_client_connection(fenv):
    client = RawClient(fenv.public)
    assert client.request("pool.localhost")[0] == 200
    closed, took = timed(client.closed)
    assert closed and 0.4 < took < 2.5, took
    client.close()


def test_timeout_client_ends_a_stalled_request_body(fenv):
    client = RawClient(fenv.public)
    client.send(b"POST / HTTP/1.1\r\nHost: pool.localhost\r\nContent-Length: 10\r\n\r\nabc")
    closed, took = timed(client.closed)
    assert closed and 0.8 < took < 3, took
    client.close()


def test_timeout_connect_is_502(fenv):
    (status, _, _), took = timed(lambda: get(fenv.public, "blackhole.localhost", "/connect"))
    assert status == 502 and 0.4 < took < 2.5, took
    entry = fenv.json_log('"request":"GET /connect HTTP/1.1"')[-1]
    assert entry["termination_state"] == "sC" and entry["backend"] == "blackhole"


def test_timeout_server_is_504(fenv):
    (status, _, _), took = timed(lambda: get(fenv.public, "pool.localhost", "/slow?sleep=3"))
    assert status == 504 and 0.8 < took < 2.5, took


def test_timeout_tunnel_closes_an_idle_websocket(fenv):
    client = RawClient(fenv.public)
    client.send(b"GET /ws HTTP/1.1\r\nHost: upgrade.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert client.response()[0] == 101
    closed, took = timed(client.closed)
    assert closed and 0.8 < took < 3, took
    client.close()


def test_timeout_queue_and_maxconn_503_with_error_page_and_retry_after(fenv):
    backend = fenv.backends["queued"]           # maxconn 1, each answer takes 0.5 s; queue 0.75 s
    results = {}

    def one(i):
        results[i] = get(fenv.public, "queued.localhost", f"/q{i}")

    threads = []
    for i in range(3):
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
        time.sleep(0.05)
    for t in threads:
        t.join(TIMEOUT)
    statuses = [results[i][0] for i in range(3)]
    assert statuses == [200, 200, 503], statuses
    _, headers, body = results[2]
    assert headers["retry-after"] == "7" and body == b"<h1>busy, come back later</h1>"
    assert headers["content-type"].startswith("text/html")
    assert backend.requests >= 2
    entry = fenv.json_log('"request":"GET /q2 HTTP/1.1"')[-1]
    assert entry["termination_state"] == "sQ" and entry["Tw"] >= 700


# --------------------------------------------------------------------------- balancers

def test_leastconn_avoids_the_busy_server(fenv):
    slow = threading.Thread(target=lambda: get(fenv.public, "lc.localhost", "/busy?sleep=1"))
    slow.start()
    wait_until(lambda: any(b"/busy" in fenv.backends[n].raw for n in ("lc1", "lc2")), what="busy request arrived")
    busy = "lc1" if b"/busy" in fenv.backends["lc1"].raw else "lc2"
    names = [get(fenv.public, "lc.localhost", "/quick")[2]["name"] for _ in range(4)]
    assert busy not in names, names
    slow.join(TIMEOUT)
    time.sleep(0.1)         # the router counts the request done just after its last byte is sent
    names = [get(fenv.public, "lc.localhost", "/quick")[2]["name"] for _ in range(4)]
    assert sorted(names) == ["lc1", "lc1", "lc2", "lc2"]      # idle again: shared


def test_source_hash_is_stable_and_survives_a_server_going_down_and_back(fenv):
    sources = [f"127.0.0.{i}" for i in range(10, 30)]
    first = {s: get(fenv.public, "src.localhost", "/", source=s)[2]["name"] for s in sources}
    assert all(get(fenv.public, "src.localhost", "/", source=s)[2]["name"] == first[s] for s in sources[:5])
    assert len(set(first.values())) >= 2
    victim = first[sources[0]]
    key = f"src/{fenv.backends[victim].address}"
    fenv.write_state({key: ("down", time.time())})
    time.sleep(1.2)
    moved = {s: get(fenv.public, "src.localhost", "/", source=s)[2]["name"] for s in sources}
    assert all(moved[s] == first[s] for s in sources if first[s] != victim)
    assert all(moved[s] != victim for s in sources)
    fenv.write_state({key: ("up", time.time())})
    time.sleep(1.2)
    assert {s: get(fenv.public, "src.localhost", "/", source=s)[2]["name"] for s in sources} == first


def test_uri_hash_sends_a_path_to_one_server(fenv):
    paths = [f"/tile/{i}" for i in range(20)]
    first = {p: get(fenv.public, "uri.localhost", p)[2]["name"] for p in paths}
    assert all(get(fenv.public, "uri.localhost", p + "?v=2")[2]["name"] == first[p] for p in paths[:6])
    assert len(set(first.values())) >= 2


# --------------------------------------------------------------------------- retries and passive health

def test_refused_server_is_retried_then_marked_down_until_the_checker_says_up(fenv):
    refused = f"127.0.0.1:{fenv.refused_port}"
    for _ in range(4):
        status, _, echo = get(fenv.public, "retry.localhost", "/r")
        assert status == 200 and echo["name"] == "good"
    out = daemon_output(fenv.proc)
    assert f"retry/{refused}: marked down after 2 refused connects in a row" in out
    failures = out.count(f"retry/{refused}: connect failed")
    assert failures == 2
    for _ in range(4):
        assert get(fenv.public, "retry.localhost", "/r")[2]["name"] == "good"
    assert daemon_output(fenv.proc).count(f"retry/{refused}: connect failed") == failures   # not tried
    entry = [e for e in fenv.json_log('"request":"GET /r HTTP/1.1"')][0]
    assert entry["retries"] in (0, 1)
    # The server comes back, and the checker says so: traffic returns to it.
    revived = Backend("revived")
    revived.port = fenv.refused_port
    fenv.loop.run(revived.start())
    try:
        fenv.write_state({f"retry/{refused}": ("up", time.time())})
        time.sleep(1.2)
        names = {get(fenv.public, "retry.localhost", "/r")[2]["name"] for _ in range(4)}
        assert names == {"revived", "good"}
    finally:
        fenv.loop.run(revived.kill())


def test_without_redispatch_a_retry_goes_to_the_same_server(fenv):
    refused = f"sticky/127.0.0.1:{fenv.refused2_port}"
    statuses = sorted(get(fenv.public, "sticky.localhost", "/s")[0] for _ in range(2))
    assert statuses == [200, 502]                  # round robin: one request per server
    out = daemon_output(fenv.proc)
    assert out.count(f"{refused}: connect failed") == 2 and "marked down" not in out.split(refused)[-1]
    entry = [e for e in fenv.json_log('"request":"GET /s HTTP/1.1"') if e["status"] == 502][0]
    assert entry["retries"] == 1 and entry["termination_state"] == "SC"


# --------------------------------------------------------------------------- ACLs, header rules, forwarding

def test_acls_by_source_and_path_are_403(fenv):
    assert get(fenv.public, "acl.localhost", "/admin/x")[0] == 403
    assert get(fenv.public, "acl.localhost", "/admin/x", source="127.0.0.2")[0] == 200
    assert get(fenv.public, "acl.localhost", "/public", source="127.0.0.3")[0] == 403
    assert get(fenv.public, "acl.localhost", "/public")[0] == 200


def test_header_rules_on_request_and_response(fenv):
    client = RawClient(fenv.public)
    status, headers, body = client.request("acl.localhost", "/h", "X-App: forged\r\nX-Debug: 1\r\nX-Tag: mine\r\n")
    client.close()
    echo = json.loads(body)
    assert header_values(echo, "X-App") == ["acl"] and header_values(echo, "X-Debug") == []
    assert header_values(echo, "X-Tag") == ["mine", "t"]
    assert headers["x-served-by"] == "frontgate" and "content-type" not in headers


def test_forwarding_fields_replaced_and_rfc7239(fenv):
    _, _, echo = get(fenv.public, "pool.localhost", "/f", extra="X-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 1.1.1.1\r\n"
                                                                 "Forwarded: for=1.1.1.1\r\n", source="127.0.0.1")
    assert header_values(echo, "X-Forwarded-For") == ["127.0.0.1"]        # forwarded_for = "replace"
    assert header_values(echo, "X-Real-IP") == ["127.0.0.1"]
    assert header_values(echo, "X-Forwarded-Host") == ["pool.localhost"]
    assert header_values(echo, "Forwarded") == ['for=127.0.0.1;proto=http;host="pool.localhost"']
    # An untrusted source's copies are dropped.
    _, _, echo = get(fenv.public, "pool.localhost", "/f", extra="X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n",
                     source="127.0.0.9")
    assert header_values(echo, "X-Forwarded-For") == ["127.0.0.9"]
    assert header_values(echo, "X-Forwarded-Host") == ["pool.localhost"]


# --------------------------------------------------------------------------- routing

def test_routing_by_header_regex_and_default_app(fenv):
    assert get(fenv.public, "route.localhost", "/", extra="X-Env: beta\r\n")[2]["name"] == "beta"
    assert get(fenv.public, "route.localhost", "/a/b.png")[2]["name"] == "images"
    assert get(fenv.public, "tiles42.localhost", "/")[2]["name"] == "tiles"
    assert get(fenv.public, "route.localhost", "/other")[2]["name"] == "fallback"
    assert get(fenv.public, "unknown.example", "/")[2]["name"] == "fallback"


def test_json_access_log(fenv):
    get(fenv.public, "pool.localhost", "/json-logged?x=1")
    entry = fenv.json_log('"request":"GET /json-logged?x=1 HTTP/1.1"')[-1]
    assert entry["client_ip"] == "127.0.0.1" and entry["frontend"] == "public" and entry["status"] == 200
    assert (entry["backend"], entry["server"]) == ("pool", fenv.backends["pool"].address)
    assert entry["bytes"] > 0 and entry["termination_state"] == "--" and entry["Tt"] >= entry["Tr"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["accept_date"])


# --------------------------------------------------------------------------- streaming with bounded memory

def _stream_with_rss(fenv, size: int) -> int:
    """Upload then download `size` bytes through the router; the router's peak RSS growth."""
    import psutil
    router = psutil.Process(fenv.proc.pid)
    baseline = router.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], router.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        client = RawClient(fenv.public)
        client.sock.settimeout(60)
        client.send(b"PUT /sink HTTP/1.1\r\nHost: stream.localhost\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"u" * (1 << 20)
        left = size
        while left:
            client.send(piece[:min(left, len(piece))])
            left -= min(left, len(piece))
        status, _, body = client.response()
        assert status == 200 and int(body) == size
        client.send(b"GET /download?n=%d HTTP/1.1\r\nHost: stream.localhost\r\n\r\n" % size)
        while b"\r\n\r\n" not in client.buf:
            assert client._fill()
        head, client.buf = client.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % size in head
        got = len(client.buf)
        while got < size:
            data = client.sock.recv(1 << 20)
            assert data
            got += len(data)
        assert got == size
        client.close()
    finally:
        done.set()
        sampler.join(5)
    return peak[0] - baseline


def test_64_mib_both_ways_with_bounded_memory(fenv):
    growth = _stream_with_rss(fenv, 64 << 20)
    assert growth < 32 << 20, f"router RSS grew by {growth >> 20} MiB"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_1_gib_both_ways_with_bounded_memory(fenv):
    growth = _stream_with_rss(fenv, 1 << 30)
    assert growth < 32 << 20, f"router RSS grew by {growth >> 20} MiB"

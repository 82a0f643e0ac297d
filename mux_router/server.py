"""The mux-router's I/O: listeners, client connections, backend exchanges, WebSocket tunnels.

Protocol decisions live in the pure modules (http1: framing, routing: apps and redirects,
balancer: server order, forwarding: the heads we write); this module moves bytes between sockets
with backpressure (every write is followed by a bounded drain) and never holds a whole body.

A client connection is a loop of requests. Each request is routed on its own, so two requests on
one keep-alive connection may go to two apps. A backend connection lives for one request for now
(`Connection: close`); BackendConnector is where a pool will go.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass

from frontgate import proxy_protocol
from frontgate.config import Address, App, ConfigError, Listener, RouterConfig, Server, load_router_config
from frontgate.health_state import StateFollower
from mux_router import forwarding
from mux_router.balancer import RoundRobin
from mux_router.http1 import (CHUNKED, CLOSE, LENGTH, ChunkedDecoder, HttpError, RequestHead,
                              RequestHeadParser, ResponseHead, ResponseHeadParser)
from mux_router.routing import find_redirect, ip_in, parse_ip, select_app

log = logging.getLogger("mux-router")

READ_SIZE = 64 * 1024
SHUTDOWN_GRACE = 10.0          # SIGTERM: in-flight requests get this long to finish
STATE_REFRESH_INTERVAL = 0.5   # how often the health state file is stat'ed
LINGER_TIME = 2.0              # reading (and dropping) a client's unread input before closing ...
LINGER_BYTES = 256 * 1024      # ... so that the kernel does not RST away our error response
HALF_CLOSED_GRACE = 10.0       # a tunnel with one side closed waits at most this for the other
UPLOAD_FINISH_WAIT = 2.0       # response sent, request body still arriving: how long to wait for it


class ClientGone(Exception):
    """The client closed, reset, or stalled past its timeout: nothing more can be sent to it."""


class BackendFailed(Exception):
    """The backend closed, reset, stalled or sent garbage after the response had started."""


# --------------------------------------------------------------------------- backend connections

@dataclass
class BackendConnection:
    server: Server
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def abort(self) -> None:
        self.writer.transport.abort()


class BackendConnector:
    """Opens connections to backend servers. The connection pool slots in here: `acquire` would
    hand out an idle kept-alive connection and `release(conn, reusable=True)` would take it back;
    `keeps_alive` then becomes True and requests are sent with `Connection: keep-alive`."""

    keeps_alive = False

    async def acquire(self, server: Server, timeout: float) -> BackendConnection:
        address = server.address
        async with asyncio.timeout(timeout):
            if address.is_unix:
                reader, writer = await asyncio.open_unix_connection(address.path, limit=READ_SIZE)
            else:
                reader, writer = await asyncio.open_connection(address.host, address.port, limit=READ_SIZE)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return BackendConnection(server, reader, writer)

    def release(self, conn: BackendConnection, reusable: bool = False) -> None:
        """Done with a connection. `reusable`: its response was complete and it may carry another
        request (ignored until there is a pool). Callers abort() a broken connection first."""
        conn.writer.close()


# --------------------------------------------------------------------------- the router

class Router:
    def __init__(self, config: RouterConfig):
        self.config = config
        self.health = StateFollower(config.state_file, config.state_stale_after)
        self.balancers = {app.name: RoundRobin(app.servers) for app in config.apps}
        self.backends = BackendConnector()
        self.listeners: dict[Address, Listener] = {}     # by address: a reload may rename or retune
        self.servers: dict[Address, asyncio.Server] = {}
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()         # background tasks, referenced until done

    # ---- lifecycle

    async def start(self) -> None:
        for listener in self.config.listeners:
            self.servers[listener.address] = await self._bind(listener)
            self.listeners[listener.address] = listener
            log.info("listening on %s (%s%s)", listener.address, listener.name,
                     ", PROXY v2 required" if listener.proxy_protocol else "")
        self.health.refresh()

    async def _bind(self, listener: Listener) -> asyncio.Server:
        address = listener.address

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await ClientConnection(self, listener, reader, writer).run()

        if address.is_unix:
            _remove_stale_socket(address.path)
            return await asyncio.start_unix_server(on_connect, address.path, limit=READ_SIZE)
        # SO_REUSEPORT: several worker processes (supervisord numprocs) share the port, and a
        # restarted worker can bind while the old one still drains.
        return await asyncio.start_server(on_connect, address.host, address.port, reuse_port=True,
                                          limit=READ_SIZE, backlog=1024)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        refresher = asyncio.create_task(self._follow_health())
        await self._stop.wait()
        refresher.cancel()
        await self.shutdown()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_health(self) -> None:
        while True:
            await asyncio.sleep(STATE_REFRESH_INTERVAL)
            try:
                self.health.refresh()
            except Exception:   # never let a bad file stop the follower; StateFollower logs its own
                log.exception("health state refresh failed")

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, close idle connections, give in-flight requests `grace` seconds."""
        self.stopping = True
        for server in self.servers.values():
            server.close()
        busy = []
        for conn in list(self.connections):
            if conn.idle:
                conn.task.cancel()
            busy.append(conn.task)
        log.info("stopping: %d connections in flight", sum(not c.idle for c in self.connections))
        if busy:
            done, pending = await asyncio.wait(busy, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("stopping: %d connections cut after the %gs grace", len(pending), grace)
                await asyncio.wait(pending, timeout=1)
        for address in self.listeners:
            if address.is_unix:
                with contextlib.suppress(OSError):
                    os.unlink(address.path)

    async def reload(self) -> None:
        """SIGHUP: re-read the config; keep the running one if the new one is invalid or cannot
        bind its listeners."""
        async with self._reload_lock:
            path = self.config.path
            try:
                new = load_router_config(path)
            except ConfigError as e:
                log.error("reload failed, keeping the running config: %s", e)
                return
            by_address = {l.address: l for l in new.listeners}
            added: dict[Address, asyncio.Server] = {}
            try:
                for address, listener in by_address.items():
                    if address not in self.servers:
                        added[address] = await self._bind(listener)
            except OSError as e:
                for server in added.values():
                    server.close()
                log.error("reload failed, keeping the running config: cannot listen on %s: %s",
                          address, e.strerror or e)
                return
            for address in list(self.servers):
                if address not in by_address:
                    self.servers.pop(address).close()
            self.servers.update(added)
            self.listeners = by_address
            # Round-robin positions survive for apps whose servers did not change.
            self.balancers = {app.name: (self.balancers[app.name]
                                         if app.name in self.balancers
                                         and self.balancers[app.name].servers == app.servers
                                         else RoundRobin(app.servers)) for app in new.apps}
            if (new.state_file, new.state_stale_after) != (self.config.state_file, self.config.state_stale_after):
                self.health = StateFollower(new.state_file, new.state_stale_after)
                self.health.refresh()
            self.config = new
            log.info("reloaded %s: %d listeners, %d apps, %d redirect rules", path, len(new.listeners),
                     len(new.apps), len(new.redirects))

    # ---- helpers for connections

    def server_order(self, app: App) -> list[Server]:
        balancer = self.balancers[app.name]
        return balancer.order(lambda s: self.health.is_down(app.server_key(s)))


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def access_log(line: str) -> None:
    sys.stdout.write(line + "\n")


# --------------------------------------------------------------------------- client connections

class ClientConnection:
    def __init__(self, router: Router, listener: Listener, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.router = router
        self.address = listener.address
        self._listener = listener       # as bound; `listener` gives the current settings
        self.reader, self.writer = reader, writer
        self.task = asyncio.current_task()
        self.buf = bytearray()          # received from the client, not yet used
        self.idle = True                # waiting for a request's first byte: safe to close
        peer = writer.get_extra_info("peername")
        self.peer_ip = parse_ip(peer[0]) if isinstance(peer, tuple) else None
        self.client = (str(self.peer_ip), peer[1]) if self.peer_ip is not None else ("unknown", 0)
        self.requests = 0
        self.request_started = time.monotonic()

    @property
    def listener(self) -> Listener:
        # The current settings for this address; a reload that dropped it leaves the old ones.
        return self.router.listeners.get(self.address, self._listener)

    def _peer_trusted(self) -> bool:
        # A unix socket's peers are local processes allowed in by the file's permissions.
        return self.peer_ip is None or ip_in(self.peer_ip, self.router.config.trusted_sources)

    async def run(self) -> None:
        self.router.connections.add(self)
        sock = self.writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.listener.proxy_protocol and not await self._read_proxy_header():
                return
            while not self.router.stopping and await self._one_request():
                pass
        except (ClientGone, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass        # shutdown closing an idle connection, or the grace period is over
        except Exception:
            log.exception("connection from %s:%s failed", *self.client)
        finally:
            self.router.connections.discard(self)
            self.writer.close()

    # ---- PROXY v2

    async def _read_proxy_header(self) -> bool:
        if not self._peer_trusted():
            log.warning("refused %s:%s on %s: PROXY headers are accepted only from trusted_sources",
                        *self.client, self.listener.name)
            return False
        buf = bytearray()
        try:
            async with asyncio.timeout(self.router.config.timeouts.http_request):
                while (result := proxy_protocol.decode(buf)) is None:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        return False
                    buf += data
        except proxy_protocol.ProxyProtocolError as e:
            log.warning("bad PROXY header from %s:%s on %s: %s", *self.client, self.listener.name, e)
            await self._answer_and_close(400, "PROXY protocol v2 header required")
            return False
        except TimeoutError:
            return False
        header, consumed = result
        self.buf = buf[consumed:]
        if header.command == "PROXY" and header.src is not None:
            # LOCAL (the terminator's own health check) keeps the socket's address.
            self.peer_ip = parse_ip(header.src[0])
            self.client = (str(self.peer_ip), header.src[1])
        return True

    # ---- one request

    async def _read_head(self) -> RequestHead | None:
        """The next request head; None when the client closed or idled out between requests.
        HttpError for a malformed head, TimeoutError when it arrived too slowly (408)."""
        timeouts = self.router.config.timeouts
        parser = RequestHeadParser()
        data, self.buf = bytes(self.buf), bytearray()
        received = bool(data)
        self.request_started = time.monotonic()
        # The first request must start within http_request, a later one within the keep-alive
        # idle time (client); once its first byte is in, the whole head within http_request.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeouts.http_request if received or self.requests == 0 else timeouts.client)
        self.idle = not received
        while True:
            if data:
                if not received:
                    received, self.idle = True, False
                    deadline = loop.time() + timeouts.http_request
                    self.request_started = time.monotonic()     # the access log's duration starts here
                head = parser.feed(data)
                if head is not None:
                    self.buf = bytearray(parser.leftover)
                    return head
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                if received:
                    raise
                return None             # nothing asked: close quietly
            if not data:
                return None             # closed, possibly mid-head: nobody to answer

    async def _one_request(self) -> bool:
        """Serve one request; True when the connection can carry another."""
        try:
            head = await self._read_head()
        except HttpError as e:
            sent = await self._answer_and_close(e.status, e.reason)
            self._log(self.request_started, None, e.status, sent, "<BADREQ>", note=e.reason)
            return False
        except TimeoutError:
            sent = await self._answer_and_close(408)
            self._log(self.request_started, None, 408, sent, "<BADREQ>", note="request head timeout")
            return False
        if head is None:
            return False
        self.requests += 1
        exchange = Exchange(self, head, self.request_started)
        try:
            return await exchange.run()
        finally:
            exchange.log()

    # ---- sending

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.router.config.timeouts.client):
                await self.writer.drain()
        except (ConnectionError, TimeoutError) as e:
            raise ClientGone(str(e)) from None

    async def answer(self, status: int, *, close: bool, method: str = "GET", detail: str = "",
                     location: str | None = None) -> int:
        data = forwarding.simple_response(status, close=close, detail=detail, location=location,
                                          with_body=method != "HEAD")
        await self.send(data)
        return len(data)

    async def _answer_and_close(self, status: int, detail: str = "") -> int:
        try:
            sent = await self.answer(status, close=True, detail=detail)
        except ClientGone:
            return 0
        await self.linger()
        return sent

    async def linger(self) -> None:
        """Close after an answer while the client may still be sending: shut our side, then read
        and drop its input for a moment, so that unread data does not make the kernel reset the
        connection (and lose the answer) before the client has read it."""
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        dropped = 0
        with contextlib.suppress(OSError, TimeoutError, ConnectionError):
            async with asyncio.timeout(LINGER_TIME):
                while dropped < LINGER_BYTES:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        break
                    dropped += len(data)

    def _log(self, started: float, route: str | None, status: int, sent: int, request_line: str,
             note: str = "") -> None:
        ms = (time.monotonic() - started) * 1000
        ip, port = self.client
        access_log(f"{ip}:{port} {self.listener.name} {route or '-'} {status} {sent} {ms:.0f}ms "
                   f"\"{request_line}\"" + (f" ({note})" if note else ""))


# --------------------------------------------------------------------------- one request/response

class Exchange:
    """One request on a client connection: redirect, route, backend, response."""

    def __init__(self, conn: ClientConnection, head: RequestHead, started: float):
        self.conn = conn
        self.router = conn.router
        self.config = conn.router.config       # one config for the whole request, even across a reload
        self.head = head
        self.started = started
        self.route: str | None = None
        self.status = 0
        self.sent = 0
        self.note = ""
        self.body_done = not head.has_body     # the request body has been read to its end
        self.upload: asyncio.Task | None = None
        self.response_complete = False         # the backend's response was read to its end

    def log(self) -> None:
        self.conn._log(self.started, self.route, self.status, self.sent, self.head.request_line, self.note)

    def _keep_alive(self) -> bool:
        return self.head.keep_alive and self.body_done and not self.router.stopping

    async def _answer(self, status: int, detail: str = "", location: str | None = None) -> bool:
        """The router's own answer instead of a backend's. Returns whether the connection stays."""
        keep = self._keep_alive()
        self.status = status
        self.note = self.note or detail
        self.sent += await self.conn.answer(status, close=not keep, method=self.head.method,
                                            detail=detail if status >= 400 else "", location=location)
        if not keep:
            await self.conn.linger()
        return keep

    async def run(self) -> bool:
        head, conn, cfg = self.head, self.conn, self.config
        redirect = find_redirect(cfg.redirects, listener=conn.listener.name, client_ip=conn.peer_ip,
                                 host=head.host, host_as_sent=head.host_as_sent, target=head.origin_target)
        if redirect is not None:
            code, location = redirect
            self.route = "<redirect>"
            return await self._answer(code, location=location)
        app = select_app(cfg.apps, head.host, head.path)
        if app is None:
            return await self._answer(404, "no app serves this host and path")
        self.route = f"{app.name}/-"
        servers = self.router.server_order(app)
        if not servers:
            return await self._answer(503, f"no server of {app.name} is up")
        backend = await self._connect(app, servers[:app.retries + 1])
        if backend is None:
            return await self._answer(502, f"no server of {app.name} answered")
        self.route = f"{app.name}/{backend.server.address}"
        try:
            return await self._exchange(backend)
        finally:
            if self.upload is not None:
                self.upload.cancel()
                await asyncio.gather(self.upload, return_exceptions=True)   # collects its error too
            if not self.response_complete:
                backend.abort()         # mid-message: the connection is good for nothing else
            self.router.backends.release(backend, reusable=self.response_complete)

    async def _connect(self, app: App, servers: list[Server]) -> BackendConnection | None:
        timeout = self.config.timeouts.connect
        for server in servers:
            try:
                return await self.router.backends.acquire(server, timeout)
            except (OSError, TimeoutError) as e:
                reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
                log.warning("%s/%s: connect failed: %s", app.name, server.address, reason)
        return None

    # ---- talking to the backend

    async def _exchange(self, backend: BackendConnection) -> bool:
        head, conn = self.head, self.conn
        backend.writer.write(forwarding.backend_request_head(
            head, client_ip=conn.client[0], scheme=conn.listener.scheme,
            client_trusted=ip_in(conn.peer_ip, self.config.trusted_sources),
            keep_alive=self.router.backends.keeps_alive))
        if head.has_body:
            self.upload = asyncio.create_task(self._upload_body(backend))
        try:
            resp, rest = await self._response_head(backend)
        except HttpError as e:
            return await self._backend_error(502, e.reason)
        except TimeoutError:
            return await self._backend_error(504, "backend response timeout")
        except BackendFailed as e:
            return await self._backend_error(502, str(e))

        if resp.status == 101:
            return await self._tunnel(backend, resp, rest)
        # The request body may still be on its way (a streaming backend, an early error): whether
        # the connection stays is settled once it is in, so only what is known now says close.
        keep = head.keep_alive and resp.body != CLOSE and not self.router.stopping
        self.status = resp.status
        await self._send(forwarding.client_response_head(resp, keep_alive=keep, client_version=head.version))
        try:
            await self._response_body(backend, resp, rest)
        except BackendFailed as e:
            self.note = f"response cut: {e}"
            return False
        self.response_complete = True
        if self.upload is not None and not self.upload.done():
            await asyncio.wait({self.upload}, timeout=UPLOAD_FINISH_WAIT)
        if not self.body_done:
            # Unread body bytes would be taken for the next request: close instead.
            self.note = self.note or "response before the end of the request body"
            await conn.linger()
            return False
        return keep and not self.router.stopping

    async def _backend_error(self, status: int, reason: str) -> bool:
        """No response head from the backend: answer ourselves, unless the request upload failed
        first (then that failure is the story)."""
        upload_error = None
        if self.upload is not None and self.upload.done() and not self.upload.cancelled():
            upload_error = self.upload.exception()
        if isinstance(upload_error, HttpError):
            self.note = f"bad request body: {upload_error.reason}"
            await self._answer(upload_error.status, upload_error.reason)
            return False
        if isinstance(upload_error, ClientGone):
            self.status, self.note = 499, "client went away during the request body"
            return False
        log.warning("%s: %s", self.route, reason)
        return await self._answer(status, reason)

    async def _read_backend(self, backend: BackendConnection) -> bytes:
        try:
            async with asyncio.timeout(self.config.timeouts.server):
                return await backend.reader.read(READ_SIZE)
        except ConnectionError as e:
            raise BackendFailed(f"read failed: {e}") from None

    async def _response_head(self, backend: BackendConnection) -> tuple[ResponseHead, bytes]:
        """The final response head (or a 101); interim 1xx responses (100 Continue, 103 Early
        Hints) are passed to the client on the way."""
        data = b""
        while True:
            parser = ResponseHeadParser(self.head.method)
            while (resp := parser.feed(data)) is None:
                data = await self._read_backend(backend)
                if not data:
                    raise BackendFailed("backend closed the connection without a response")
            data = parser.leftover
            if resp.informational and resp.status != 101:
                await self._send(forwarding.client_response_head(resp, keep_alive=True,
                                                                 client_version=self.head.version))
                continue
            return resp, data

    async def _send(self, data: bytes) -> None:
        await self.conn.send(data)
        self.sent += len(data)

    async def _response_body(self, backend: BackendConnection, resp: ResponseHead, rest: bytes) -> None:
        if resp.body == LENGTH:
            remaining = resp.content_length
            data = rest[:remaining]
            while True:
                if data:
                    remaining -= len(data)
                    await self._send(data)
                if remaining <= 0:
                    return
                data = await self._read_backend(backend)
                if not data:
                    raise BackendFailed(f"backend closed with {remaining} body bytes missing")
                data = data[:remaining]
        elif resp.body == CHUNKED:
            decoder = ChunkedDecoder(error_status=502)
            data = rest
            while True:
                try:
                    _, used = decoder.feed(data)
                except HttpError as e:
                    raise BackendFailed(f"bad chunked body: {e.reason}") from None
                if used:
                    await self._send(data[:used])
                if decoder.done:
                    return
                data = await self._read_backend(backend)
                if not data:
                    raise BackendFailed("backend closed in the middle of a chunked body")
        elif resp.body == CLOSE:
            data = rest
            while True:
                if data:
                    await self._send(data)
                data = await self._read_backend(backend)
                if not data:
                    return

    # ---- request body

    async def _upload_body(self, backend: BackendConnection) -> None:
        """Stream the request body to the backend; runs beside the response reader so that an
        early answer (or 100 Continue) gets through. On a client-side failure the backend
        connection is aborted, which wakes the response reader."""
        try:
            if self.head.chunked:
                await self._upload_chunked(backend)
            else:
                await self._upload_length(backend, self.head.content_length)
            self.body_done = True
        except (HttpError, ClientGone):
            backend.abort()
            raise
        except (ConnectionError, TimeoutError):
            # The backend stopped reading; its response (if any) is still worth waiting for.
            self.note = "backend did not take the whole request body"
            raise

    async def _client_data(self) -> bytes:
        if self.conn.buf:
            data, self.conn.buf = bytes(self.conn.buf), bytearray()
            return data
        try:
            async with asyncio.timeout(self.config.timeouts.client):
                data = await self.conn.reader.read(READ_SIZE)
        except (ConnectionError, TimeoutError) as e:
            raise ClientGone(str(e) or type(e).__name__) from None
        if not data:
            raise ClientGone("client closed in the middle of the request body")
        return data

    async def _to_backend(self, backend: BackendConnection, data: bytes) -> None:
        backend.writer.write(data)
        async with asyncio.timeout(self.config.timeouts.server):
            await backend.writer.drain()

    async def _upload_length(self, backend: BackendConnection, remaining: int) -> None:
        while remaining > 0:
            data = await self._client_data()
            if len(data) > remaining:           # a pipelined request follows the body
                self.conn.buf = bytearray(data[remaining:])
                data = data[:remaining]
            remaining -= len(data)
            await self._to_backend(backend, data)

    async def _upload_chunked(self, backend: BackendConnection) -> None:
        decoder = ChunkedDecoder(error_status=400)
        while not decoder.done:
            data = await self._client_data()
            _, used = decoder.feed(data)
            if used < len(data):
                self.conn.buf = bytearray(data[used:])
            await self._to_backend(backend, data[:used])

    # ---- WebSocket

    async def _tunnel(self, backend: BackendConnection, resp: ResponseHead, rest: bytes) -> bool:
        """After a 101 to a WebSocket upgrade: bytes both ways until both sides are done (or one
        is and the other lingers), or nothing moved for timeouts.tunnel."""
        self.status = resp.status
        if not self.head.is_websocket_upgrade:
            return await self._backend_error(502, "backend switched protocols without an upgrade request")
        if self.upload is not None:
            with contextlib.suppress(Exception):
                await self.upload
            if not self.body_done:
                return False
        await self._send(forwarding.client_response_head(resp, keep_alive=False, client_version=self.head.version))
        conn = self.conn
        if rest:
            await self._send(rest)
        if conn.buf:
            backend.writer.write(bytes(conn.buf))
            conn.buf.clear()
        last_activity = [time.monotonic()]

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_client: bool) -> None:
            while data := await reader.read(READ_SIZE):
                last_activity[0] = time.monotonic()
                writer.write(data)
                if to_client:
                    self.sent += len(data)
                await writer.drain()
            if writer.can_write_eof():       # pass the half-close on
                writer.write_eof()

        pumps = {asyncio.create_task(pump(conn.reader, backend.writer, False)),
                 asyncio.create_task(pump(backend.reader, conn.writer, True))}
        idle_limit = self.config.timeouts.tunnel
        pending = pumps
        try:
            while pending:
                limit = idle_limit if len(pending) == 2 else min(idle_limit, HALF_CLOSED_GRACE)
                wait = last_activity[0] + limit - time.monotonic()
                if wait <= 0:
                    self.note = "tunnel idle timeout"
                    break
                done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if any(not t.cancelled() and t.exception() is not None for t in done):
                    break
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        return False

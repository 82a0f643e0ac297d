"""The router's client connections as asyncio Protocols, with a fast path for simple requests.

Most requests through a front door are small keep-alive GETs to a backend connection that is
already open. Serving those with callbacks (no coroutine, no stream objects, no timeout context
per read) is what lets a Python router keep up; see README "Performance". Every other request (a
body, an upgrade, a redirect, an error, a server that needs a connect or a queue wait, a head split
over several reads, a pipelined request) is handed, with the bytes it came in, to the coroutine
engine in server.py (ClientConnection/Exchange) for that one request; then the connection comes
back here. Both paths parse with the same http1 parsers, route with the same routing functions,
write the same heads (forwarding) and log the same line: the fast path only takes a request when
the slow one would do exactly the same thing with it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import NamedTuple

from frontgate import proxy_protocol
from mux_router import forwarding, ws_keepalive
from mux_router.http1 import CHUNKED, CLOSE, LENGTH, NO_BODY, ChunkedDecoder, HttpError, RequestHeadParser, ResponseHeadParser
from mux_router.routing import Refusal, client_cert_line, decide

log = logging.getLogger("mux-router")

READ_SIZE = 64 * 1024
PIPELINE_LIMIT = 64 * 1024      # client bytes buffered while a request is served: then stop reading
HALF_CLOSED_GRACE = 10.0        # a tunnel with one side closed waits at most this for the other

_IDLE, _BUSY, _SLOW, _TUNNEL, _CLOSED = "idle", "busy", "slow", "tunnel", "closed"


class Routed(NamedTuple):
    """The fast path's routing decision for a request it hands to the engine: the balancer has
    spoken, so the engine must not ask it again."""
    app: object
    servers: list                   # in the balancer's order
    slot: object | None             # a claimed server slot, or None: queue for one


class LastRequest(NamedTuple):
    """A client connection's last fast request and what was made of it: the same bytes again
    under the same config have the same head and route, and get the same head sent on (what
    else those depend on is the connection's own)."""
    data: bytes
    config: object
    head: object
    app: object
    sent: bytes                     # the head sent to the backend


class LastAnswer(NamedTuple):
    """The last final response head on a client connection, the request it answered, and the
    head the client got: a response head that repeats it, to the same method, is the same parse,
    and the same head goes to the client for the same app, keep-alive and version."""
    resp: object
    method: str
    app: object
    keep: bool
    version: str
    out: bytes


class DetachableWriter(asyncio.StreamWriter):
    """A StreamWriter that can be dropped while its transport goes on: when a WebSocket tunnel
    takes a connection over, the stream objects the engine used go (an idle tunnel should cost
    little memory). The router closes every transport itself; the base class would close the
    transport when the writer is garbage collected."""

    def __del__(self) -> None:
        pass


def _take_unread(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What a StreamReader holds that nobody read, and whether EOF came: taken out of it, the
    transport's reading resumed if the reader had paused it. For readers this module made and
    that the engine has stopped reading."""
    data = bytes(reader._buffer)                    # noqa: SLF001
    reader._buffer.clear()                          # noqa: SLF001
    reader._maybe_resume_transport()                # noqa: SLF001
    return data, reader._eof                        # noqa: SLF001


class Deadline:
    """One lazily re-armed timer: moving a deadline costs an assignment; the pending timer, when it
    fires early, re-arms itself for the new time (per-request timers would cost a heap operation
    each)."""

    __slots__ = ("_loop", "_callback", "when", "_handle", "_handle_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback):
        self._loop, self._callback = loop, callback
        self.when: float | None = None
        self._handle = None
        self._handle_at = 0.0

    def set(self, delay: float) -> None:
        when = self._loop.time() + delay
        self.when = when
        if self._handle is None or self._handle_at > when:
            if self._handle is not None:
                self._handle.cancel()
            self._handle_at = when
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        self.when = None

    def cancel(self) -> None:
        """For good: the callback (usually a method of the owner) is dropped too, so that no
        reference cycle keeps the owner for the garbage collector."""
        self.when = None
        self._callback = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if self.when is None or self._callback is None:
            return
        if self._loop.time() < self.when:
            self._handle_at = self.when
            self._handle = self._loop.call_at(self.when, self._fire)
            return
        self.when = None
        self._callback()


class ClientProtocol(asyncio.Protocol):
    """One client connection. Modes: idle (between requests, reading a head), busy (a fast
    exchange in flight), slow (the coroutine engine serves one request), tunnel (after a
    WebSocket upgrade), closed."""

    def __init__(self, router, listener, make_connection):
        self.router = router
        self.listener = listener        # as of the accept; the connection follows reloads of its address
        self._make_connection = make_connection     # server.ClientConnection
        self.mode = _IDLE
        self.buf = b""                  # client bytes not yet used
        self.need_proxy = listener.proxy_protocol
        self.exchange: FastExchange | None = None
        self.tunnel: Tunnel | None = None
        self.slow_task: asyncio.Task | None = None
        self.reader: asyncio.StreamReader | None = None     # for the slow engine, made on first use
        self.delegate: asyncio.StreamReaderProtocol | None = None
        self.write_paused = False
        self.reading_paused = False
        self.client_eof = False
        self.closed: asyncio.Future | None = None
        self.last_request: LastRequest | None = None
        self.last_answer: LastAnswer | None = None

    # ---- asyncio callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        # TCP_NODELAY is the event loop's default on TCP transports (tests/unit/test_event_loop.py).
        self.closed = self.loop.create_future()
        self.conn = self._make_connection(self.router, self.listener, transport)
        self.timer = Deadline(self.loop, self._timed_out)
        self.server_timer = Deadline(self.loop, self._server_timed_out)     # for fast exchanges
        self.router.connections.add(self)
        if self.need_proxy and not self.conn.peer_trusted():
            self._to_slow(b"")          # it refuses and logs why
            return
        # The first request (or PROXY header) must come within http_request, later ones within
        # keep_alive of the previous answer.
        self.timer.set(self.router.config.timeouts.http_request)

    def data_received(self, data: bytes) -> None:
        if self.mode is _TUNNEL:
            self.tunnel.from_client(data)
            return
        if self.mode is _SLOW:
            self.delegate.data_received(data)
            return
        self.buf = self.buf + data if self.buf else data
        if self.mode is _IDLE:
            self._serve_buffer()
        elif len(self.buf) > PIPELINE_LIMIT and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.mode is _TUNNEL:
            self.tunnel.client_eof()
        elif self.mode is _SLOW:
            self.delegate.eof_received()
        elif self.mode is _IDLE:
            if self.buf:
                self._to_slow(self.buf)     # an incomplete head, then EOF: the engine's story
            else:
                self.transport.close()
        return True                     # keep our side open: a response may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        mode, self.mode = self.mode, _CLOSED
        self.timer.cancel()
        self.server_timer.cancel()
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
        active = self._active(mode)
        if active is not None:
            active.client_lost(exc)
        self.router.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.delegate is not None:
            self.delegate.pause_writing()
        active = self._active(self.mode)
        if active is not None:
            active.client_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.delegate is not None:
            self.delegate.resume_writing()
        active = self._active(self.mode)
        if active is not None:
            active.client_resumed()

    def _active(self, mode: str) -> "FastExchange | Tunnel | None":
        """What the client's events go to in `mode`: the fast exchange, the tunnel, or nothing."""
        return self.exchange if mode is _BUSY else self.tunnel if mode is _TUNNEL else None

    # ---- for Router.shutdown

    @property
    def idle(self) -> bool:
        return self.mode is _IDLE and not self.buf

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        if self.slow_task is not None:
            self.slow_task.cancel()
        self.transport.abort()

    # ---- requests

    def _server_timed_out(self) -> None:
        if self.mode is _BUSY and self.exchange is not None:
            self.exchange.server_timeout()

    def _timed_out(self) -> None:
        if self.mode is _IDLE:
            self.transport.close()      # nothing asked (or nothing more): close quietly
        elif self.mode is _BUSY and self.exchange is not None:
            self.exchange.client_stalled()

    def _serve_buffer(self) -> None:
        """Serve the request at the start of self.buf here if it is a simple one, else hand it to
        the coroutine engine."""
        data = self.buf
        if self.need_proxy:
            try:
                result = proxy_protocol.decode(data)
            except proxy_protocol.ProxyProtocolError:
                result = None
            if result is None:              # incomplete or bad: the engine waits, or answers 400
                self._to_slow(data)
                return
            header, consumed = result
            self.conn.take_proxy_header(header)
            self.need_proxy = False
            data = self.buf = data[consumed:]
            if not data:
                return
        router = self.router
        started = time.monotonic()
        conn = self.conn
        cfg = router.config
        last = self.last_request
        if last is not None and last.config is cfg and last.data == data:
            head, app, sent = last.head, last.app, last.sent
        else:
            parser = RequestHeadParser()
            try:
                head = parser.feed(data)
            except HttpError:
                head = None
            if head is None or parser.consumed != len(data) or head.has_body or head.is_websocket_upgrade:
                self._to_slow(data)
                return
            app = decide(cfg, head, listener=conn.listener.name, client_ip=conn.peer_ip, sni_check=conn.sni_host,
                         sni=conn.sni, cert_verified=conn.client_cert_line is not None)
            if isinstance(app, Refusal):
                self._to_slow(data)         # the engine gives the router's own answers
                return
            sent = None
        servers = router.server_order(app, conn.hash_key(app, head))
        if not servers:
            self._to_slow(data)             # the engine's 503
            return
        # From here on the balancer has spoken: a hand-over carries its choice along.
        slot = router.claim_slot(app, servers)
        if slot is None:                    # every server at its maxconn: the engine queues
            self._to_slow(data, Routed(app, servers, None))
            return
        backend = router.backends.take_idle(slot.server)
        if backend is None:                 # a connect: the engine does retries and redispatch
            self._to_slow(data, Routed(app, servers, slot))
            return
        self.buf = b""
        self.mode = _BUSY
        self.timer.clear()
        conn.requests += 1
        conn.request_started = started
        if sent is None:
            sent = forwarding.backend_request_head(
                head, client_ip=conn.client[0], scheme=conn.listener.scheme,
                client_trusted=conn.client_trusted(cfg), keep_alive=True,
                forwarded_for=cfg.forwarded_for, forwarded=cfg.forwarded, rules=app.request_headers,
                client_cert_line=client_cert_line(cfg, app, conn.sni, conn.client_cert_line, head.host))
            self.last_request = LastRequest(data, cfg, head, app, sent)
        self.exchange = FastExchange(self, cfg, head, data, app, servers, slot, backend, started, sent)

    def exchange_done(self, keep: bool) -> None:
        self.exchange = None
        if self.mode is _CLOSED:
            return
        if not keep or self.router.stopping:
            self.mode = _IDLE
            self.transport.close()
            return
        self._back_to_idle()

    def _back_to_idle(self) -> None:
        """Between requests: serve what is buffered (pipelined), else wait for the next one."""
        self.mode = _IDLE
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.buf:
            self._serve_buffer()
        elif self.client_eof:
            self.transport.close()
        else:
            self.timer.set(self.router.config.timeouts.keep_alive)

    # ---- the coroutine engine, for one request

    def _to_slow(self, data: bytes, routed: Routed | None = None) -> None:
        self.buf = b""
        self.mode = _SLOW
        self.timer.clear()
        if self.reader is None:
            self.reader = asyncio.StreamReader(limit=READ_SIZE, loop=self.loop)
            self.delegate = asyncio.StreamReaderProtocol(self.reader, loop=self.loop)
            self.delegate.connection_made(self.transport)
            if self.write_paused:
                self.delegate.pause_writing()
            self.conn.attach(self.reader, DetachableWriter(self.transport, self.delegate, self.reader, self.loop))
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if data:
            if self.reader._eof:                                    # noqa: SLF001 - our own reader
                # Requests pipelined before the client's EOF, which an earlier hand-over fed.
                self.reader._eof = False                            # noqa: SLF001
            self.reader.feed_data(data)
        if self.client_eof:
            self.reader.feed_eof()
        need_proxy, self.need_proxy = self.need_proxy, False
        self.slow_task = self.loop.create_task(self.conn.serve_one(need_proxy, routed))
        self.slow_task.add_done_callback(self._slow_done)

    def _slow_done(self, task: asyncio.Task) -> None:
        self.slow_task = None
        result = not task.cancelled() and task.result()
        if not isinstance(result, bool):            # serve_one's answer to a WebSocket 101: the exchange
            if self.mode is _CLOSED:
                result.tunnel_ended("client closed", 0, 0)
            else:
                self._start_tunnel(result)
            return
        if self.mode is _CLOSED:
            return
        if not result or self.router.stopping:
            self.mode = _IDLE
            self.transport.close()
            return
        # What the engine read but did not use, then what it was fed but did not read.
        self.buf = self.conn.take_unused() + _take_unread(self.reader)[0]
        self._back_to_idle()

    def _start_tunnel(self, exchange) -> None:
        """The engine answered a WebSocket upgrade with the backend's 101: from now on the bytes
        move here. What arrived on either side since the engine stopped reading goes first."""
        unread, client_done = _take_unread(self.reader)
        from_client = self.conn.take_unused() + unread
        to_client, backend_done = _take_unread(exchange.tunnel_backend.reader)
        # An idle tunnel should cost little memory (thousands are held open): the stream objects
        # the engine used on both sides go, and the connection's timers, as the tunnel has its own.
        self.conn.attach(None, None)
        self.reader = self.delegate = None
        self.timer.cancel()
        self.server_timer.cancel()
        self.mode = _TUNNEL
        self.tunnel = Tunnel(self, exchange, exchange.hand_over_tunnel())
        self.tunnel.start(from_client, client_done, to_client, backend_done)


class Tunnel(asyncio.Protocol):
    """A WebSocket connection after the 101: bytes both ways between the client's and the
    backend's transports, until both sides are done (or one is and the other lingers past
    HALF_CLOSED_GRACE), or nothing moved for timeouts.tunnel. It is the backend transport's
    protocol from its start; at its end it aborts that transport."""

    __slots__ = ("client", "exchange", "backend", "router", "idle_limit", "deadline", "client_done",
                 "backend_done", "bytes_to_client", "bytes_from_client", "ended", "keepalive")

    def __init__(self, client: ClientProtocol, exchange, backend: asyncio.Transport):
        self.client, self.exchange, self.backend = client, exchange, backend
        self.router = client.router
        self.idle_limit = exchange.config.timeouts.tunnel
        self.client_done = self.backend_done = self.ended = False
        self.bytes_to_client = self.bytes_from_client = 0
        # >>> ws_keepalive hook (tunnel_ping): the router's pings, and the client's pongs to them
        interval = ws_keepalive.ping_interval(exchange.config, exchange.app)
        self.keepalive = (ws_keepalive.Keepalive(interval, client.loop.time(), *exchange.tunnel_prelude)
                          if interval else None)
        # <<< ws_keepalive hook

    def start(self, from_client: bytes, client_done: bool, to_client: bytes, backend_done: bool) -> None:
        self.router.stats.tunnels += 1
        self.backend.set_protocol(self)
        if self.client.write_paused:
            self.backend.pause_reading()
        # Its idle deadline is swept with all the others' (frontgate.sweep): no timer of its own.
        self._activity()
        self.router.tunnel_sweep.add(self)
        if from_client:
            self.from_client(from_client)
        if to_client:
            self.data_received(to_client)
        if client_done:
            self.client_eof()
        if backend_done and not self.ended:
            self.eof_received()

    def _activity(self) -> None:
        self.deadline = self.client.loop.time() + (self.idle_limit if not (self.client_done or self.backend_done)
                                                    else min(self.idle_limit, HALF_CLOSED_GRACE))

    def sweep(self, now: float) -> bool:
        if self.ended:
            return False
        if self.keepalive is not None and not (self.client_done or self.backend_done):  # ws_keepalive hook
            due = self.keepalive.due(now)
            if due == ws_keepalive.DEAD:
                self.end(due)
                return False
            if due:
                self.client.transport.write(due)
        if now < self.deadline:
            return True
        self.end("" if (self.client_done or self.backend_done) else "tunnel idle timeout")
        return False

    # ---- client side (from ClientProtocol)

    def from_client(self, data: bytes) -> None:
        self.bytes_from_client += len(data)
        if self.keepalive is not None:          # ws_keepalive hook: our pongs stop here
            data = self.keepalive.client_data(data, self.client.loop.time())
        if data:
            self.backend.write(data)
        self._activity()

    def client_eof(self) -> None:
        self.client_done = True
        if self.backend.can_write_eof():       # pass the half-close on
            self.backend.write_eof()
        self._one_side_done()

    def client_paused(self) -> None:
        self.backend.pause_reading()

    def client_resumed(self) -> None:
        self.backend.resume_reading()

    def client_lost(self, exc: Exception | None) -> None:
        self.end("client closed" if exc is None else f"client: {exc}")

    # ---- backend side: the backend transport's protocol callbacks (none count after the end)

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        self.bytes_to_client += len(data)
        if self.keepalive is not None:          # ws_keepalive hook: frame boundaries for the pings
            self.keepalive.backend_data(data)
        self.client.transport.write(data)
        self._activity()

    def eof_received(self) -> bool:
        if not (self.backend_done or self.ended):
            self.backend_done = True
            if self.client.transport.can_write_eof():
                self.client.transport.write_eof()
            self._one_side_done()
        return True                     # keep our side open: the client may still send

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended:
            return
        if exc is None and not self.backend_done:
            self.eof_received()
        if exc is not None or self.client_done:
            self.end("" if exc is None else f"backend: {exc}")

    def pause_writing(self) -> None:
        if not self.ended:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.ended:
            self.client.transport.resume_reading()

    # ---- endings

    def _one_side_done(self) -> None:
        if self.client_done and self.backend_done:
            self.end("")
        else:
            self._activity()

    def end(self, note: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.router.tunnel_sweep.discard(self)
        self.router.stats.tunnels -= 1
        self.backend.abort()
        client = self.client
        client.tunnel = None
        if client.mode is not _CLOSED:
            client.mode = _IDLE
            client.transport.close()
        self.exchange.tunnel_ended(note, self.bytes_to_client, self.bytes_from_client)


class FastExchange:
    """One simple request on a pooled backend connection, driven by the backend's callbacks
    (it is the backend protocol's `sink` for the time of the exchange)."""

    # Where an exchange starts: class defaults, so that making one per request sets only the rest.
    resp = None
    framing = NO_BODY
    remaining = 0
    decoder: ChunkedDecoder | None = None
    keep = False
    status = 0
    sent = 0
    received = False                # any byte from the backend
    extra = False                   # the backend sent more than its response
    note = ""
    termination = "--"
    t_response = -1.0
    finished = False
    parser: ResponseHeadParser | None = None      # made when the response head is not the last one

    def __init__(self, client: ClientProtocol, config, head, raw: bytes, app, servers, slot, backend,
                 started: float, sent: bytes):
        self.client = client
        self.conn = client.conn
        self.router = client.router
        self.config = config
        self.head, self.raw, self.app, self.slot, self.backend = head, raw, app, slot, backend
        self.servers = servers          # the balancer's order: a stale connection's retry may redispatch
        self.started = started
        self.server_timer = client.server_timer     # the connection's: one Deadline for all its exchanges
        self.server_timer.set(config.timeouts.server)
        backend.protocol.sink = self
        self.sent_at = time.monotonic()
        backend.transport.write(sent)

    # ---- backend callbacks

    def backend_data(self, data: bytes) -> None:
        if self.finished:
            self.extra = True
            return
        if self.resp is None:
            self.received = True
            self._response_head(data)
        elif self.framing is LENGTH:
            self._length_body(data)
        elif self.framing is CHUNKED:
            self._chunked(data)
        else:       # CLOSE: until the backend closes
            self._send(data)
        # The server's inactivity counts again from here, unless the response is done or the
        # client's pace rules (a paused client clears this timer). Most responses come in one read.
        if not self.finished and not self.client.write_paused:
            self.server_timer.set(self.config.timeouts.server)

    def backend_eof(self) -> None:
        self.backend_lost(None)

    def backend_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.resp is None:
            if not self.received and not self.sent:
                # A pooled connection the server closed meanwhile (it can have processed nothing:
                # no body, no byte back): the engine retries the request on a fresh connection.
                self._give_back_to_engine()
                return
            reason = f"read failed: {exc}" if exc is not None else "backend closed the connection without a response"
            self._answer(502, reason, "SH")
        elif self.framing is CLOSE and exc is None:
            self._finish(complete=True, keep=False)
        else:
            what = (f"backend closed with {self.remaining} body bytes missing" if self.framing is LENGTH
                    else "backend closed in the middle of a chunked body")
            self._cut(f"read failed: {exc}" if exc is not None else what, "SD")

    def backend_write_paused(self, paused: bool) -> None:
        pass                            # only a small head goes to the backend

    # ---- client events (from ClientProtocol)

    def client_paused(self) -> None:
        # The client's pace is judged by timeouts.client; the server cannot send meanwhile.
        self.backend.transport.pause_reading()
        self.server_timer.clear()
        self.client.timer.set(self.config.timeouts.client)

    def client_resumed(self) -> None:
        self.client.timer.clear()
        if not self.finished:
            self.backend.transport.resume_reading()
            self.server_timer.set(self.config.timeouts.server)

    def client_stalled(self) -> None:
        """The client took nothing for timeouts.client."""
        self.termination = "cD"
        self.client.transport.abort()

    def client_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.termination = "CD"
            self.note = self.note or "client went away"
            self._finish(complete=False, keep=False)

    # ---- the response

    def _response_head(self, data: bytes) -> None:
        head = self.head
        last = self.client.last_answer
        if (self.parser is None and last is not None and data.startswith(last.resp.raw)
                and last.method == head.method):
            # A head ends at its first empty line, so this is all of it.
            resp = last.resp
            rest = data[len(resp.raw):]
        else:
            if self.parser is None:
                self.parser = ResponseHeadParser(head.method)
            try:
                resp = self.parser.feed(data)
            except HttpError as e:
                self._answer(502, e.reason, "SH")
                return
            if resp is None:
                return
            rest = self.parser.leftover
        if resp.informational:
            if resp.status == 101:
                self._answer(502, "backend switched protocols without an upgrade request", "SH")
                return
            self._send(forwarding.client_response_head(resp, keep_alive=True, client_version=head.version))
            self.parser = ResponseHeadParser(head.method)       # not None: no shortcut for the next head
            if rest:
                self._response_head(rest)
            return
        self.t_response = (time.monotonic() - self.sent_at) * 1000
        self.resp = resp
        self.status = resp.status
        self.framing = resp.body
        self.keep = head.keep_alive and resp.body is not CLOSE and not self.router.stopping
        if (last is not None and last.resp is resp and last.app is self.app and last.keep == self.keep
                and last.version == head.version):
            out = last.out
        else:
            out = forwarding.client_response_head(resp, keep_alive=self.keep, client_version=head.version,
                                                  rules=self.app.response_headers)
            self.client.last_answer = LastAnswer(resp, head.method, self.app, self.keep, head.version, out)
        if resp.body is LENGTH:
            self.remaining = resp.content_length
            self._length_body(rest, out)
        elif resp.body is CHUNKED:
            self._send(out)
            self.decoder = ChunkedDecoder(error_status=502)
            if rest:
                self._chunked(rest)
        elif resp.body is CLOSE:
            self._send(out + rest if rest else out)
        else:
            self.extra = bool(rest)
            self._send(out)
            self._finish(complete=True, keep=self.keep)

    def _length_body(self, data: bytes, head: bytes = b"") -> None:
        """Up to `remaining` body bytes of `data` to the client (after `head`, in one write)."""
        take = data[:self.remaining]
        self.extra = len(take) < len(data)
        self.remaining -= len(take)
        self._send(head + take if head else take)
        if self.remaining == 0:
            self._finish(complete=True, keep=self.keep)

    def _chunked(self, data: bytes) -> None:
        try:
            _, used = self.decoder.feed(data)
        except HttpError as e:
            self._cut(f"bad chunked body: {e.reason}", "SD")
            return
        if used:
            self._send(data[:used] if used < len(data) else data)
        if self.decoder.done:
            self.extra = used < len(data)
            self._finish(complete=True, keep=self.keep)

    def _send(self, data: bytes) -> None:
        self.client.transport.write(data)
        self.sent += len(data)

    def server_timeout(self) -> None:
        if self.finished:
            return
        if self.resp is None:
            self._answer(504, "backend response timeout", "sH")
        else:
            self._cut("backend timeout", "sD")

    # ---- endings

    def _answer(self, status: int, reason: str, termination: str) -> None:
        """No (usable) response head from the backend: the router's own answer, as the engine's."""
        log.warning("%s/%s: %s", self.app.name, self.backend.server.address, reason)
        self.status, self.note, self.termination = status, reason, termination
        self.keep = self.head.keep_alive and not self.router.stopping
        page = forwarding.error_page(status, self.app.error_pages, self.config.error_pages)
        self._send(forwarding.simple_response(status, close=not self.keep, detail=reason,
                                              with_body=self.head.method != "HEAD", page=page,
                                              retry_after=self.config.retry_after))
        self._finish(complete=False, keep=self.keep)

    def _cut(self, reason: str, termination: str) -> None:
        """The response started and cannot be completed: the client connection closes."""
        self.note, self.termination = f"response cut: {reason}", termination
        self._finish(complete=False, keep=False)

    def _give_back_to_engine(self) -> None:
        self.finished = True
        self.server_timer.clear()
        self.backend.protocol.sink = None
        self.backend.abort()
        self.router.backends.release(self.backend)
        self.conn.requests -= 1
        client = self.client
        client.exchange = None
        if client.mode is _CLOSED:
            self.router.release_slot(self.app, self.slot)
        else:
            client._to_slow(self.raw + client.buf, Routed(self.app, self.servers, self.slot))

    def _finish(self, complete: bool, keep: bool) -> None:
        """`complete`: the backend's response was read to its end; `keep`: the client connection
        can carry another request."""
        self.finished = True
        self.server_timer.clear()
        backend = self.backend
        backend.protocol.sink = None
        reusable = complete and not self.extra and self.resp is not None and self.resp.keep_alive
        if not reusable:
            backend.abort()
        elif self.client.write_paused:
            backend.transport.resume_reading()
        self.router.backends.release(backend, reusable=reusable)
        self.router.release_slot(self.app, self.slot)
        self.router.stats.fast_path += 1
        # Tq/Tw/Tc: the head came in one read, a slot was free, the connection was pooled.
        self.conn.write_log(self.started, self.app.server_key(backend.server), self.status, self.sent,
                             self.head, self.note, self.termination, 0.0, 0.0, 0.0, self.t_response,
                             (time.monotonic() - self.started) * 1000, 0, len(self.raw))
        self.client.exchange_done(keep)

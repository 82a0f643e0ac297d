"""One client connection's HTTP/1.1 exchanges, sans-IO: the one place every rule of the router's
exchange lives, for every request, simple or not.

An `Exchange` is fed what happens (client bytes, EOF, a backend attached, backend bytes, a
timeout) and answers by calling its `io`, the transport that owns the sockets (client.py; in
tests an in-memory peer): bytes for the client or the backend, a backend wanted or released,
deadlines to arm, the connection to close, a tunnel to start, a request to log. It owns the PROXY
header intake, request heads (http1_request), the one decision (routing.decide), the heads written
(forwarding), request and response body framing, 1xx, keep-alive on both sides, upgrades,
pipelining, the router's own answers, termination states and the access-log record. Two bases
hold a side each: request_body.RequestBodySide (the body on its way) and response.ResponseSide
(the backend's response).

The `io` interface (all calls are made synchronously; `dispatch` may call back at once):
  to_client(data), to_backend(data)
  dispatch(app, hash_key)        -> later backend_ready(...) or dispatch_failed(...)
  redo_fresh()                   the backend connection is dead: the same server (and slot) on a
                                 fresh one -> backend_ready/dispatch_failed
  release_backend(reusable)      done with the backend connection (and its server slot)
  backend_reading(on)            pause/resume reading the backend (the client's pace)
  client_reading(on)             pause/resume reading the client (bytes piled up)
  client_deadline(s), server_deadline(s)   arm (seconds) or clear (None) the two timers
  close_client(linger), abort_client()
  start_tunnel(client_sent, backend_sent)   after a 101: bytes both ways, then tunnel_ended();
                                 the arguments: what already passed each way after the two heads
  start_h2(data)                 the PROXY header says ALPN h2: HTTP/2's driver takes the connection
  log(fields)                    an access-log record (access_log.record's arguments)
"""
from __future__ import annotations

import logging
import time

from frontgate import proxy_protocol
from mux_router import forwarding
from mux_router.chunked import ChunkedDecoder
from mux_router.http1 import HttpError
from mux_router.http1_request import RequestHeadParser
from mux_router.http1_response import ResponseHeadParser
from mux_router.peer import Peer
from mux_router.request_body import RequestBodySide
from mux_router.request_trailers import TrailerFilter
from mux_router.response import CLOSED, DISPATCH, EXCHANGE, IDLE, PROXY, TUNNEL, ResponseSide
from mux_router.routing import Refusal, client_cert_line, decide

log = logging.getLogger("mux-router")

PIPELINE_LIMIT = 64 * 1024      # client bytes held while they cannot be used yet: then stop reading

__all__ = ["Exchange", "PROXY", "IDLE", "DISPATCH", "EXCHANGE", "TUNNEL", "CLOSED"]


class Exchange(RequestBodySide, ResponseSide):
    """One client connection. `router` gives `config`, `listeners` and `stopping` (read when
    needed: a reload or a shutdown applies from the next decision on)."""

    # Per-request state: class defaults, reset by deleting the instance's copies (_reset).
    head = None
    app = None
    route: str | None = None
    status = 0
    sent = 0                    # bytes to the client for this request
    body_in = 0                 # request body bytes from the client
    head_size = 0               # the head's, once a tunnel has let go of it
    note = ""
    termination = "--"
    t_head = t_queue = t_connect = t_response = -1.0
    retries = 0
    config = None               # the config of the request's decision, kept for all of it
    backend = False             # a backend connection is attached
    reused = False              # ... taken from the pool
    body = None                 # the request body's framing while it is on its way: int or TrailerFilter
    body_limit = 0
    resp = None                 # the final response head
    resp_parser: ResponseHeadParser | None = None
    framing = None
    remaining = 0
    decoder: ChunkedDecoder | None = None
    keep = False                # the client connection stays after the response
    received = False            # any byte from the backend
    extra = False               # the backend sent more than its response
    complete = False            # the response was read to its end
    sent_at = 0.0

    def __init__(self, router, peer: Peer, io, need_proxy: bool, clock=time.monotonic):
        self.router, self.peer, self.io, self.clock = router, peer, io, clock
        self.state = PROXY if need_proxy else IDLE
        self.relayed = need_proxy       # a PROXY header comes first (the terminator's connection)
        self.buf = b""                  # client bytes not yet used
        self.parser: RequestHeadParser | None = None    # a head that came in pieces
        self.requests = 0
        self.started = clock()          # the current request's first byte (the access log's Tt)
        self.client_eof = self.client_paused = self.reading_paused = self._serving = False

    # ---- the connection

    def start(self) -> None:
        """The connection is open: refuse a PROXY header from an untrusted socket, else wait for
        the first request (or PROXY header) for http_request."""
        if self.state is PROXY and not self.peer.socket_trusted():
            log.warning("refused %s:%s on %s: PROXY headers are accepted only from trusted_sources",
                        *self.peer.client, self.peer.listener.name)
            self._close(linger=False)
            return
        self.io.client_deadline(self.router.config.timeouts.http_request)

    @property
    def idle(self) -> bool:
        """Between requests with nothing of the next one: a shutdown may close it at once. Not a
        relayed connection between its PROXY header and its first request: the terminator sends
        the header as a client's handshake ends, so that client's request is on its way."""
        return (self.state is IDLE and not self.buf and self.parser is None
                and (self.requests > 0 or not self.relayed))

    def client_data(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        state = self.state
        if state is IDLE or state is PROXY:
            self._serve()
        elif self.body is not None and self.backend:
            self._upload()
        elif len(self.buf) > PIPELINE_LIMIT and not self.reading_paused and state is not CLOSED:
            self.reading_paused = True
            self.io.client_reading(False)

    def client_eof_received(self) -> None:
        self.client_eof = True
        state = self.state
        if state is IDLE or state is PROXY:
            if not self.buf or self.parser is not None or state is PROXY:
                self._close(linger=False)       # nothing more, or a head cut short: nobody to answer
        elif self.body is not None and self.backend and not self.buf:
            self._client_gone("client closed in the middle of the request body")

    def client_lost(self) -> None:
        """The client's connection is gone."""
        state, self.state = self.state, CLOSED
        if state is DISPATCH or state is EXCHANGE:
            self.termination = "CD"
            self.note = self.note or "client went away"
            self._end(keep=False)

    def client_write_paused(self, paused: bool) -> None:
        # The client's pace is judged by timeouts.client; the server cannot send meanwhile.
        self.client_paused = paused
        if self.state is not EXCHANGE:
            return
        io = self.io
        if paused:
            io.backend_reading(False)
            io.server_deadline(None)
            io.client_deadline(self.config.timeouts.client)
        else:
            io.client_deadline(None)
            if not self.complete:
                io.backend_reading(True)
                self._server_deadline()

    def client_timeout(self) -> None:
        """Nothing came (or was taken) from the client in time."""
        state = self.state
        if state is IDLE and (self.buf or self.parser is not None):
            self._refuse_head(408, "", "request head timeout", "cR")
        elif state is IDLE or state is PROXY:
            self._close(linger=False)           # nothing asked (or nothing more): close quietly
        elif self.client_paused:
            self.termination = "cD"
            self.state = CLOSED
            self.io.abort_client()
            self._end(keep=False)
        elif self.complete:                     # the response is out, the body never finished
            self.note = self.note or "response before the end of the request body"
            self._end(keep=False, linger=True)
        elif self.body is not None:
            self._client_gone("client timeout in the middle of the request body")

    # ---- request heads

    def _serve(self) -> None:
        """Serve what is buffered: requests one after another (pipelined ones too) until one is
        waiting for its backend or the buffer holds no whole head. A loop, never a recursion: a
        client may pipeline thousands of requests the router answers itself."""
        if self._serving:
            return
        self._serving = True
        try:
            while self.buf and (self.state is IDLE or self.state is PROXY):
                if self.state is PROXY:
                    if not self._proxy_header():
                        return
                    continue
                head = self._head()
                if head is None:
                    return
                self._request(head)
        finally:
            self._serving = False

    def _proxy_header(self) -> bool:
        try:
            result = proxy_protocol.decode(self.buf)
        except proxy_protocol.ProxyProtocolError as e:
            log.warning("bad PROXY header from %s:%s on %s: %s", *self.peer.client, self.peer.listener.name, e)
            self._send(forwarding.simple_response(400, close=True, detail="PROXY protocol v2 header required"))
            self._close(linger=True)
            return False
        if result is None:
            return False
        header, consumed = result
        self.buf = self.buf[consumed:]
        self.peer.take_proxy_header(header)
        self.state = IDLE
        if header.alpn == "h2":         # the client chose HTTP/2 by ALPN: its driver takes over
            self.state, rest, self.buf = CLOSED, self.buf, b""
            self.io.client_deadline(None)
            self.io.start_h2(rest)
            return False
        return True

    def _head(self):
        """The next request head from the buffer, or None (more is needed, or it was refused)."""
        parser, data = self.parser, self.buf
        first = parser is None
        if first:
            parser = RequestHeadParser()
            self.started = self.clock()
        try:
            head = parser.feed(data)
        except HttpError as e:
            self.parser, self.buf = None, b""
            self._refuse_head(e.status, e.reason, e.reason, "PR")
            return None
        if head is None:
            self.parser, self.buf = parser, b""
            if self.client_eof:
                self._close(linger=False)       # a head cut short: nobody to answer
            elif first:     # once its first byte is in, the whole head within http_request
                self.io.client_deadline(self.router.config.timeouts.http_request)
            return None
        self.parser = None
        self.buf = data[parser.consumed:] if first else parser.leftover
        return head

    def _refuse_head(self, status: int, detail: str, reason: str, termination: str) -> None:
        """A head the router cannot take (malformed, too slow): its answer, logged as <BADREQ>."""
        self._send(forwarding.simple_response(status, close=True, detail=detail))
        ms = (self.clock() - self.started) * 1000
        self._log(None, status, "<BADREQ>", reason, termination, ms, -1, -1, -1, ms, 0)
        self._close(linger=True)

    # ---- one request

    def _request(self, head) -> None:
        self.requests += 1
        self.io.client_deadline(None)
        self.head = head
        self.t_head = (self.clock() - self.started) * 1000
        self.config = cfg = self.router.config      # one config for the whole request, even across a reload
        if head.has_body:
            self.body = head.content_length if not head.chunked else None
        peer = self.peer
        app = decide(cfg, head, listener=peer.listener.name, client_ip=peer.peer_ip, sni_check=peer.sni_host,
                     sni=peer.sni, cert_verified=peer.client_cert_line is not None)
        if type(app) is Refusal:
            self.app = app.app
            self.route = f"{app.app.name}/-" if app.app is not None else app.route
            self._answer(app.status, app.detail, location=app.location, termination=app.termination,
                         close=app.close, page=app.page)
            return
        self.app = app
        self.route = f"{app.name}/-"
        if head.chunked:
            self.body = TrailerFilter(ChunkedDecoder(error_status=400), forwarding.owned_fields(app.request_headers))
            self.body_limit = app.max_body
        self.state = DISPATCH
        self.io.dispatch(app, peer.hash_key(app, head))

    def dispatch_failed(self, status: int, detail: str, termination: str, t_queue: float = -1.0,
                        t_connect: float = -1.0, retries: int = 0) -> None:
        """No backend connection for the request: the router's answer (503: none up or no slot,
        502: none answered)."""
        if self.state is not DISPATCH:
            return
        self.t_queue, self.t_connect, self.retries = t_queue, t_connect, retries
        self._answer(status, detail, termination=termination)

    def backend_ready(self, route: str, reused: bool, t_queue: float = 0.0, t_connect: float = 0.0,
                      retries: int = 0) -> None:
        """A backend connection is attached (from the pool when `reused`): the request goes on it."""
        if self.state is not DISPATCH:
            return
        self.state = EXCHANGE
        self.backend, self.reused, self.route = True, reused, route
        self.t_queue, self.t_connect, self.retries = t_queue, t_connect, self.retries + retries
        head, peer, cfg, app = self.head, self.peer, self.config, self.app
        self.io.to_backend(forwarding.backend_request_head(
            head, client_ip=peer.client[0], scheme=peer.listener.scheme, client_trusted=peer.client_trusted(cfg),
            keep_alive=not head.is_websocket_upgrade, forwarded_for=cfg.forwarded_for, forwarded=cfg.forwarded,
            rules=app.request_headers,
            client_cert_line=client_cert_line(cfg, app, peer.sni, peer.client_cert_line, head.host)))
        self.sent_at = self.clock()
        if self.body is not None:
            self._upload()
        else:
            self._server_deadline()

    def _server_deadline(self) -> None:
        # While the client is still sending the body, its pace (timeouts.client) is what the
        # server waits for: that is not the server's inactivity.
        if self.body is None and not self.client_paused:
            self.io.server_deadline(self.config.timeouts.server)

    # ---- endings

    def _answer(self, status: int, detail: str = "", location: str | None = None, termination: str | None = None,
                close: bool = False, page=None) -> None:
        """The router's own answer instead of a backend's; `page`: its body, when not an error page
        (an ACME challenge's answer)."""
        head, cfg = self.head, self.config
        keep = head.keep_alive and self.body is None and not close and not self.router.stopping
        self.status = status
        self.note = self.note or detail
        if termination is not None:
            self.termination = termination
        page = page or forwarding.error_page(status, self.app.error_pages if self.app is not None else {},
                                             cfg.error_pages)
        self._send(forwarding.simple_response(status, close=not keep, detail=detail if status >= 400 else "",
                                              location=location, with_body=head.method != "HEAD", page=page,
                                              retry_after=cfg.retry_after))
        self._end(keep=keep, linger=not keep)

    def _release(self, reusable: bool) -> None:
        if self.backend:
            self.backend = False
            self.io.release_backend(reusable)

    def _end(self, keep: bool, linger: bool = False) -> None:
        """The request is over: the backend connection back (to the pool when it can carry
        another), the log line, then the next request or the close."""
        io = self.io
        if self.backend:
            io.server_deadline(None)
            resp = self.resp
            self._release(self.complete and not self.extra and resp is not None and resp.keep_alive
                          and self.body is None)
        self._log_request()
        keep = keep and self.body is None and not self.router.stopping
        self._next_request()
        if self.state is CLOSED:
            return
        if not keep:
            self._close(linger)
            return
        self.state = IDLE
        if self.reading_paused:
            self.reading_paused = False
            io.client_reading(True)
        if self.buf:
            self._serve()
        elif self.client_eof:
            self._close(linger=False)
        else:
            io.client_deadline(self.router.config.timeouts.keep_alive)

    def _next_request(self) -> None:
        """The per-request state back to where a request starts (the class defaults): plain
        assignments, the cheapest reset there is."""
        self.head = self.app = self.route = self.config = self.body = self.resp = None
        self.resp_parser = self.framing = self.decoder = None
        self.status = self.sent = self.body_in = self.head_size = self.retries = self.body_limit = 0
        self.remaining = 0
        self.note, self.termination = "", "--"
        self.t_head = self.t_queue = self.t_connect = self.t_response = -1.0
        self.backend = self.reused = self.keep = self.received = self.extra = self.complete = False
        self.sent_at = 0.0

    def _close(self, linger: bool) -> None:
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self.io.client_deadline(None)
        self.io.close_client(linger)

    def _send(self, data: bytes) -> None:
        self.io.to_client(data)
        self.sent += len(data)

    # ---- the access log

    def _log_request(self) -> None:
        head = self.head
        total = (self.clock() - self.started) * 1000
        self._log(self.route, self.status, head, self.note, self.termination, self.t_head, self.t_queue,
                  self.t_connect, self.t_response, total, self.retries, len(head.raw) + self.head_size + self.body_in)

    def _log(self, route, status, request, note, termination, tq, tw, tc, tr, tt, retries, received=0) -> None:
        self.io.log(self.started, route, status, self.sent, request, note, termination, tq, tw, tc, tr, tt,
                    retries, received)

"""The response side of a client connection's exchange (a base of exchange.Exchange): the
backend's response head (1xx on the way, 101 to a tunnel), its body framing (length, chunked,
close), the backend's failures and timeouts. Sans-IO like the rest of the machine."""
from __future__ import annotations

import logging

from mux_router import forwarding
from mux_router.chunked import ChunkedDecoder
from mux_router.http1 import NO_TOKENS, HttpError
from mux_router.http1_response import CHUNKED, CLOSE, LENGTH, ResponseHeadParser

log = logging.getLogger("mux-router")

NO_RESPONSE = "backend closed the connection without a response"
UPLOAD_FINISH_WAIT = 2.0        # response sent, request body still arriving: how long to wait for it

# Connection states (exchange.py's).
PROXY, IDLE, DISPATCH, EXCHANGE, TUNNEL, CLOSED = "proxy", "idle", "dispatch", "exchange", "tunnel", "closed"


class ResponseSide:
    """What Exchange does with the backend's bytes and events."""

    def backend_data(self, data: bytes) -> None:
        if self.state is not EXCHANGE:
            return
        if self.complete:
            self.extra = True
            return
        framing = self.framing
        if framing is None:
            self.received = True
            self._response_head(data)
        elif framing is LENGTH:
            self._length_body(data)
        elif framing is CHUNKED:
            self._chunked(data)
        else:       # CLOSE: until the backend closes
            self._send(data)
        # The server's inactivity counts again from here, unless the response is done or the
        # client's pace rules. Most responses come in one read.
        if not self.complete and self.state is EXCHANGE:
            self._server_deadline()

    def _response_head(self, data: bytes) -> None:
        head = self.head
        while True:
            parser = self.resp_parser
            if parser is None:
                parser = self.resp_parser = ResponseHeadParser(head.method)
            try:
                resp = parser.feed(data)
            except HttpError as e:
                self._backend_error(502, e.reason, "SH")
                return
            if resp is None:
                return
            data = parser.leftover
            self.resp_parser = None
            if not resp.informational:
                break
            if resp.status == 101:
                self._upgrade(resp, data)
                return
            # Interim responses (100 Continue, 103 Early Hints) go to the client on the way.
            self._send(forwarding.client_response_head(resp, keep_alive=True, client_version=head.version))
            if not data:
                return
        self.t_response = (self.clock() - self.sent_at) * 1000
        self.resp = resp
        self.status = resp.status
        self.framing = framing = resp.body
        # The request body may still be on its way: whether the connection stays is settled once
        # it is in, so only what is known now says close.
        self.keep = keep = head.keep_alive and framing is not CLOSE and not self.router.stopping
        out = forwarding.client_response_head(resp, keep_alive=keep, client_version=head.version,
                                              rules=self.app.response_headers)
        if framing is LENGTH:
            self.remaining = resp.content_length
            self._length_body(data, out)
        elif framing is CHUNKED:
            self._send(out)
            self.decoder = ChunkedDecoder(error_status=502)
            if data:
                self._chunked(data)
        elif framing is CLOSE:
            self._send(out + data if data else out)
        else:
            self.extra = bool(data)
            self._send(out)
            self._response_done()

    def _length_body(self, data: bytes, head: bytes = b"") -> None:
        """Up to `remaining` body bytes of `data` to the client (after `head`, in one write)."""
        take = data[:self.remaining] if len(data) > self.remaining else data
        self.extra = len(take) < len(data)
        self.remaining -= len(take)
        self._send(head + take if head else take)
        if self.remaining == 0:
            self._response_done()

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
            self._response_done()

    def _response_done(self) -> None:
        self.complete = True
        self.io.server_deadline(None)
        if self.body is None:
            self._end(keep=self.keep)
        else:
            # Unread body bytes would be taken for the next request: wait a moment for the rest.
            self.io.client_deadline(UPLOAD_FINISH_WAIT)

    def _upgrade(self, resp, rest: bytes) -> None:
        """A 101: to a WebSocket upgrade, the tunnel starts; to anything else, a broken backend."""
        head = self.head
        self.status = resp.status
        if not head.is_websocket_upgrade:
            self._backend_error(502, "backend switched protocols without an upgrade request", "SH")
            return
        if self.body is not None:
            self._end(keep=False)
            return
        self.t_response = (self.clock() - self.sent_at) * 1000
        self._send(forwarding.client_response_head(resp, keep_alive=False, client_version=head.version))
        if rest:
            self._send(rest)
        client_sent = self.buf
        if client_sent:
            self.io.to_backend(client_sent)
            self.buf = b""
        # A tunnel can be held for hours, thousands at once: of the head, only what the log line needs.
        self.head_size = len(head.raw)
        self.head = head._replace(raw=b"", host=None, host_as_sent=None, path="", origin_target="",
                                  connection_tokens=NO_TOKENS)
        self.state = TUNNEL
        self.io.client_deadline(None)
        self.io.server_deadline(None)
        self.io.start_tunnel(client_sent, rest)

    def tunnel_ended(self, note: str, to_client: int, from_client: int) -> None:
        self.sent += to_client
        self.body_in += from_client
        self.note = self.note or note
        self.state = CLOSED
        self._release(False)
        self._log_request()

    def backend_closed(self, error: str | None = None) -> None:
        """The backend connection closed (`error`: it failed) before the exchange was done with it."""
        if self.state is not EXCHANGE or self.complete:
            return
        if self.resp is None:
            if (self.reused and not self.received and not self.sent and not self.head.has_body):
                # A pooled connection the server closed meanwhile (it can have processed nothing:
                # no body, no byte back): the same request once more, on a fresh connection.
                self.backend, self.reused, self.resp_parser = False, False, None
                self.state = DISPATCH
                self.io.server_deadline(None)
                self.io.redo_fresh()
                return
            self._backend_error(502, f"read failed: {error}" if error else NO_RESPONSE, "SH")
        elif self.framing is CLOSE and error is None:
            self.keep = False
            self._response_done()
        else:
            what = (f"backend closed with {self.remaining} body bytes missing" if self.framing is LENGTH
                    else "backend closed in the middle of a chunked body")
            self._cut(f"read failed: {error}" if error else what, "SD")

    def server_timeout(self) -> None:
        if self.state is not EXCHANGE or self.complete:
            return
        if self.resp is None:
            self._backend_error(504, "backend response timeout", "sH")
        else:
            self._cut("backend timeout", "sD")

    def _backend_error(self, status: int, reason: str, termination: str) -> None:
        """No usable response head from the backend: the router's own answer."""
        log.warning("%s: %s", self.route, reason)
        self._release(False)
        self._answer(status, reason, termination=termination)

    def _cut(self, reason: str, termination: str) -> None:
        """The response started and cannot be completed: the client connection closes."""
        self.note, self.termination = f"response cut: {reason}", termination
        self._end(keep=False)

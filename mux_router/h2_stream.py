"""One HTTP/2 stream as the `io` of an exchange machine (exchange.Exchange): the stream's HEADERS
and DATA go in as the HTTP/1.1 request the machine parses (h2_fields), and the HTTP/1.1 the
machine writes comes out as HEADERS, DATA and trailers (h2_response) within the client's flow
control windows. Every HTTP rule stays in the machine; this adapter only translates and paces.

Backpressure both ways: the response bytes the windows do not allow yet wait here, and the
machine hears `client_write_paused(True)` (it stops reading the backend) until the client's
WINDOW_UPDATE lets them go; request body bytes are acknowledged (WINDOW_UPDATE to the client)
only while the machine takes them (`client_reading`), so a client can have at most one window
in flight per stream.
"""
from __future__ import annotations

import collections
import logging

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from mux_router import access_log
from mux_router.backend_side import BackendSide
from mux_router.deadline import Deadline, ExchangeDeadlines
from mux_router.exchange import Exchange
from mux_router.h2_fields import Malformed, chunk, last_chunk, request_head
from mux_router.h2_response import ResponseReader
from mux_router.http1_request import RequestHead

log = logging.getLogger("mux-router")


class StreamIO(BackendSide, ExchangeDeadlines):
    """`conn` is the connection's driver (h2_connection.H2Connection): its `h2` state machine,
    `router`, `peer`, `loop`, and the connection-wide decisions (writes, stalls, the end)."""

    def __init__(self, conn, stream_id: int):
        self.conn, self.stream_id = conn, stream_id
        self.router, self.peer = conn.router, conn.peer
        self._init_backend_side()
        self.exchange: Exchange | None = None
        self.reader: ResponseReader | None = None
        self.out: collections.deque = collections.deque()    # events the windows hold back
        self.write_paused = False
        self.chunked = False            # the request body goes to the machine chunked
        self.client_done = False        # the client ended its side of the stream
        self.closing = False            # the machine is done with the stream: it ends once `out` is sent
        self.finished = False
        self.unacked = 0                # request body bytes not acknowledged while reading is paused
        self.timer = Deadline(conn.loop, self._client_timed_out)
        self.server_timer = Deadline(conn.loop, self._server_timed_out)

    # ---- from the client (the connection's events)

    def request(self, headers, ended: bool) -> None:
        exchange = self.exchange = Exchange(self.router, self.conn.peer, self, need_proxy=False)
        self.client_done = ended
        try:
            head, self.chunked = request_head(headers, has_body=not ended)
        except Malformed as e:
            exchange.note = str(e)
            self._log_malformed(str(e))
            self.reset(ErrorCodes.PROTOCOL_ERROR)
            return
        method = head[:head.index(b" ")].decode("latin-1")
        self.reader = ResponseReader(method)
        exchange.start()
        exchange.client_data(head)
        if ended:
            self.client_ended()

    def data(self, data: bytes, flow_length: int) -> None:
        if self.finished:
            self.conn.acknowledge(flow_length, self.stream_id)
            return
        if self._paused_by:
            self.unacked += flow_length
        else:
            self.conn.acknowledge(flow_length, self.stream_id)
        if data:
            self.exchange.client_data(chunk(data) if self.chunked else data)

    def trailers(self, headers) -> None:
        if self.finished:
            return
        if self.chunked:        # with a Content-Length, HTTP/1.1 has no place for trailers: dropped
            try:
                end = last_chunk(headers)
            except Malformed as e:
                self.exchange.note = str(e)
                self.reset(ErrorCodes.PROTOCOL_ERROR)
                return
            self.chunked = False
            self.exchange.client_data(end)

    def client_ended(self) -> None:
        self.client_done = True
        if self.finished:
            return
        if self.chunked:
            self.chunked = False
            self.exchange.client_data(last_chunk())
        if not self.finished:
            self.exchange.client_eof_received()

    def reset_by_client(self) -> None:
        """RST_STREAM from the client, or the connection is gone."""
        self.client_done = True
        if self.finished:
            return
        self.out.clear()
        self._finish()
        if self.exchange is not None:
            self.exchange.client_lost()

    @property
    def response_ended(self) -> bool:
        return self.reader is not None and self.reader.ended and not self.out

    # ---- the exchange's io: to the client

    def to_client(self, data: bytes) -> None:
        if self.finished:
            return
        self.out.extend(self.reader.feed(data))
        self.push()

    def push(self) -> None:
        """Send what the windows allow; the machine pauses while anything waits."""
        if self.finished:
            return
        h2c, sid, out = self.conn.h2, self.stream_id, self.out
        try:
            while out:
                event = out[0]
                kind = event[0]
                if kind == "data":
                    data, end = event[1], event[2]
                    while data:
                        n = min(len(data), h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                        if n <= 0:
                            break
                        h2c.send_data(sid, data[:n], end_stream=end and n == len(data))
                        data = data[n:]
                    if data:
                        out[0] = ("data", data, end)
                        break
                    if end and not event[1]:
                        h2c.end_stream(sid)
                elif kind == "head":
                    h2c.send_headers(sid, event[1], end_stream=event[2])
                elif kind == "info":
                    h2c.send_headers(sid, event[1])
                else:
                    h2c.send_headers(sid, event[1], end_stream=True)
                out.popleft()
        except ProtocolError:       # the stream closed meanwhile (a reset crossing our frames)
            out.clear()
            self.reset(ErrorCodes.STREAM_CLOSED)
            return
        self.conn.write()
        self.update_paused()
        if self.closing and not out:
            self._end_of_exchange()

    def update_paused(self) -> None:
        paused = bool(self.out) or self.conn.transport_paused
        if paused != self.write_paused:
            self.write_paused = paused
            if self.closing:
                if paused:
                    self.timer.set(self.exchange.config.timeouts.client if self.exchange.config
                                   else self.router.config.timeouts.client)
                else:
                    self.timer.clear()
            else:
                self.exchange.client_write_paused(paused)

    def close_client(self, linger: bool) -> None:
        """The machine is done with the stream: its response ends once the windows let it out
        (a body framed by the close ends here), or the stream is reset when it was cut."""
        if self.finished or self.closing:
            return
        reader = self.reader
        if reader is None or not reader.ended:
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        self.closing = True
        self.timer.clear()
        self.server_timer.clear()
        if self.out:
            self.write_paused = False       # from here on, the stream's own timer bounds the wait
            self.push()
        else:
            self._end_of_exchange()

    def abort_client(self) -> None:
        """The client did not take the response within timeouts.client (its windows stayed shut)."""
        self.conn.stream_stalled(self)

    def start_tunnel(self, client_sent: bytes, backend_sent: bytes) -> None:     # pragma: no cover - no upgrade reaches the machine over HTTP/2
        self.reset(ErrorCodes.INTERNAL_ERROR)

    # ---- the exchange's io: reading, timers, the log

    def _reading(self, on: bool) -> None:
        if on and self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.conn.acknowledge(unacked, self.stream_id)

    def _client_timed_out(self) -> None:
        if self.closing:
            self.conn.stream_stalled(self)
        elif not self.finished:
            self.exchange.client_timeout()

    def _server_timed_out(self) -> None:
        if not self.finished and not self.closing:
            self.exchange.server_timeout()

    def log(self, *fields) -> None:
        # The record says how the response ended: a body framed by the close ends normally ("--").
        if fields[6] == "--" and self.reader is not None and not self.finished:
            self.out.extend(self.reader.finish())
        request = fields[4]
        if type(request) is RequestHead:
            fields = (*fields[:4], f"{request.method} {request.target} HTTP/2.0", *fields[5:])
        access_log.record(self.router, self.conn.peer, *fields)

    def _log_malformed(self, reason: str) -> None:
        ex = self.exchange
        self.log(ex.started, None, 400, 0, "<BADREQ>", reason, "PR", -1, -1, -1, -1, 0, 0)

    # ---- the end

    def reset(self, code: int) -> None:
        """RST_STREAM to the client; the machine, if it still serves the stream, hears the client left."""
        if self.finished:
            return
        self.out.clear()
        self._finish()
        try:
            self.conn.h2.reset_stream(self.stream_id, code)
        except ProtocolError:
            pass
        self.conn.write()
        exchange = self.exchange
        if exchange is not None and exchange.state != "closed":
            exchange.client_lost()

    def _end_of_exchange(self) -> None:
        """The response is out: a request body the client is still sending is not wanted
        (RFC 9113 8.1: RST_STREAM NO_ERROR)."""
        if not self.client_done:
            self.reset(ErrorCodes.NO_ERROR)
            return
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        self.timer.cancel()
        self.server_timer.cancel()
        self.stop_waiting()
        self.conn.stream_finished(self)

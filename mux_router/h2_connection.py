"""An HTTP/2 client connection (RFC 9113) as an asyncio Protocol: the driver that takes over a
client connection whose PROXY header says the client chose `h2` by ALPN (client.py hands it
over). The h2 library (sans-IO) keeps the protocol's state; each stream is one exchange machine
behind an h2_stream.StreamIO, so every HTTP rule is the HTTP/1.1 engine's.

What is the connection's own: our SETTINGS and the limits of h2_limits (GOAWAY past them), the
idle timeout (no stream for timeouts.keep_alive; timeouts.http_request for the first one), a
stream stalled by a shut connection window (GOAWAY), and the graceful GOAWAY of a shutdown: a
first GOAWAY that promises every stream, a PING, and once its ACK is back (the client has seen
the first) the final one naming the last stream that will be served (RFC 9113 6.8).
"""
from __future__ import annotations

import asyncio
import logging

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from mux_router import h2_limits
from mux_router.deadline import Deadline
from mux_router.h2_stream import StreamIO

log = logging.getLogger("mux-router")

DRAIN_PING = b"drain\x00\x00\x00"
DRAIN_PING_WAIT = 1.0          # the final GOAWAY goes this long after the first, ACK or not
MAX_STREAM_ID = 2 ** 31 - 1

# h2's own checks of the fields we send are off: h2_fields.response_fields builds every header
# list already lower-cased, trimmed, without connection-specific fields, with the sensitive ones
# never indexed, and those generator chains cost as much as HPACK itself.
_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False,
                                    validate_outbound_headers=False, normalize_outbound_headers=False)
_SETTINGS = {
    SettingCodes.MAX_CONCURRENT_STREAMS: h2_limits.MAX_CONCURRENT_STREAMS,
    SettingCodes.MAX_HEADER_LIST_SIZE: h2_limits.MAX_HEADER_LIST_SIZE,
    SettingCodes.HEADER_TABLE_SIZE: h2_limits.HEADER_TABLE_SIZE,
    SettingCodes.INITIAL_WINDOW_SIZE: h2_limits.INITIAL_WINDOW_SIZE,
    SettingCodes.MAX_FRAME_SIZE: h2_limits.MAX_FRAME_SIZE,
    SettingCodes.ENABLE_PUSH: 0,
}


class H2Connection(asyncio.Protocol):

    def __init__(self, router, peer):
        self.router, self.peer = router, peer
        self.streams: dict[int, StreamIO] = {}
        self.h2 = h2.connection.H2Connection(config=_CONFIG)
        self.limits = h2_limits.ConnectionLimits(0.0)
        self.transport_paused = self.lost = self.closing = self.flush_due = False
        self.last_stream = MAX_STREAM_ID        # after a final GOAWAY: the last stream served
        self.served = 0                         # streams taken

    # ---- asyncio callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = loop = asyncio.get_running_loop()
        self.limits = h2_limits.ConnectionLimits(loop.time())
        self.closed = loop.create_future()
        self.idle_timer = Deadline(loop, self._idle_timeout)
        self.idle_timer.set(self.router.config.timeouts.http_request)
        self.router.connections.add(self)
        h2c = self.h2
        h2c.local_settings = h2.settings.Settings(client=False, initial_values=_SETTINGS)
        h2c.decoder.max_header_list_size = h2_limits.MAX_HEADER_LIST_SIZE
        h2c.decoder.max_allowed_table_size = h2_limits.HEADER_TABLE_SIZE
        h2c.initiate_connection()
        h2c.increment_flow_control_window(h2_limits.CONNECTION_WINDOW - 65535)
        self.write()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # h2 has queued its GOAWAY (PROTOCOL_ERROR, ENHANCE_YOUR_CALM for a header list or
            # CONTINUATION flood, the stream limit ...).
            self._close(f"HTTP/2 protocol error: {e}")
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                self._request(event)
            elif kind is h2.events.DataReceived:
                stream = streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(event.flow_controlled_length, event.stream_id)
                else:
                    stream.data(event.data, event.flow_controlled_length)
            elif kind is h2.events.StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.client_ended()
            elif kind is h2.events.TrailersReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.trailers(event.headers)
            elif kind is h2.events.StreamReset:
                self._reset_by_client(event.stream_id)
            elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
                if kind is h2.events.RemoteSettingsChanged:
                    self._control()
                if event.stream_id if kind is h2.events.WindowUpdated else 0:
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.push()
                else:
                    for stream in list(streams.values()):
                        stream.push()
            elif kind is h2.events.PingReceived:
                self._control()
            elif kind is h2.events.PingAckReceived:
                if event.ping_data == DRAIN_PING:
                    self._final_goaway()
            elif kind is h2.events.ConnectionTerminated:
                self.last_stream = 0        # the client leaves: finish what runs, then close
                self._close_when_done()
            if self.closing:
                return
        self.write()

    def eof_received(self) -> bool:
        """The client's side is done: the terminator half-closes an h2 connection as it drains
        (SIGTERM), where a close would race the client's next request. GOAWAY names the last
        stream taken, so the client retries the rest on a new connection; those taken finish
        (their responses still go out), then the connection closes."""
        if self.closing:
            return False
        if self.last_stream == MAX_STREAM_ID:
            self.last_stream = self.h2.highest_inbound_stream_id
            self._raw_goaway(self.last_stream)
        self.idle_timer.cancel()
        self._close_when_done()
        return not self.closing

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.closing = True
        self.idle_timer.cancel()
        for stream in list(self.streams.values()):
            stream.reset_by_client()
        self.router.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.transport_paused = True
        for stream in list(self.streams.values()):
            stream.update_paused()

    def resume_writing(self) -> None:
        self.transport_paused = False
        for stream in list(self.streams.values()):
            stream.push()
            stream.update_paused()

    # ---- streams

    def _request(self, event) -> None:
        sid = event.stream_id
        if sid > self.last_stream:      # after the final GOAWAY: never served, the client may retry
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        self.idle_timer.clear()
        self.served += 1
        stream = self.streams[sid] = StreamIO(self, sid)
        stream.request(event.headers, event.stream_ended is not None)

    def _reset_by_client(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        stream.reset_by_client()
        if not self.limits.reset(self.loop.time()):
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, self.limits.exceeded)

    def _control(self) -> None:
        if not self.limits.control(self.loop.time()):
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, self.limits.exceeded)

    def stream_finished(self, stream: StreamIO) -> None:
        self.streams.pop(stream.stream_id, None)
        if not self.streams:
            if self.last_stream != MAX_STREAM_ID:
                self._close_when_done()
            elif not self.closing:
                self.idle_timer.set(self.router.config.timeouts.keep_alive)

    def stream_stalled(self, stream: StreamIO) -> None:
        """A response waited longer than timeouts.client for the client's windows: with the
        connection's window shut too, the client stalls every stream (GOAWAY); else that one."""
        if self.h2.outbound_flow_control_window <= 0 or self.transport_paused:
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, "flow control windows shut past timeouts.client")
        else:
            stream.reset(ErrorCodes.CANCEL)

    def acknowledge(self, length: int, sid: int) -> None:
        """Request body bytes taken: the client may send as many more (WINDOW_UPDATE; for a
        stream already closed, the connection's window only)."""
        if length and not self.closing:
            try:
                self.h2.acknowledge_received_data(length, sid)
            except h2.exceptions.ProtocolError:
                pass
            self.write()

    # ---- the end

    def write(self) -> None:
        """Frames are queued: they go out once this event-loop turn is over, so one write to the
        client carries what every stream (and the connection) queued in it."""
        if not self.flush_due and not self.lost:
            self.flush_due = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now (before a close or a frame written beside the h2 library)."""
        self.flush_due = False
        data = self.h2.data_to_send()
        if data and not self.lost and not self.transport.is_closing():
            self.transport.write(data)

    def goaway(self, code: int, reason: str) -> None:
        if code != ErrorCodes.NO_ERROR:
            log.warning("GOAWAY to %s:%s: %s", *self.peer.client, reason)
        try:
            self.h2.close_connection(error_code=code, additional_data=reason.encode()[:100])
        except h2.exceptions.ProtocolError:
            pass
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.closing:
            return
        log.debug("closing HTTP/2 connection of %s:%s: %s", *self.peer.client, reason)
        self.flush()
        self.closing = True
        self.transport.close()          # flushes what is queued; streams end in connection_lost

    def _idle_timeout(self) -> None:
        if not self.streams:
            self.close()

    def _close_when_done(self) -> None:
        if not self.streams and not self.closing:
            self._close("done after GOAWAY")

    # ---- for Router.shutdown

    @property
    def idle(self) -> bool:
        """No stream in flight, and not a fresh connection: its first request is on its way (the
        terminator relays the client as its handshake ends), so a shutdown drains it instead."""
        return not self.streams and self.served > 0

    def close(self) -> None:
        if not self.closing and not self.lost:
            self.goaway(ErrorCodes.NO_ERROR, "closing")

    def abort(self) -> None:
        self.transport.abort()

    def drain(self) -> None:
        """Shutdown with streams in flight: no new stream, the ones that run finish."""
        if self.closing or self.last_stream != MAX_STREAM_ID:
            return
        self._raw_goaway(MAX_STREAM_ID)
        self.h2.ping(DRAIN_PING)
        self.write()
        self.loop.call_later(DRAIN_PING_WAIT, self._final_goaway)

    def _final_goaway(self) -> None:
        if self.closing or self.last_stream != MAX_STREAM_ID:
            return
        self.last_stream = self.h2.highest_inbound_stream_id
        self._raw_goaway(self.last_stream)
        self._close_when_done()

    def _raw_goaway(self, last: int) -> None:
        # Written beside the h2 library, whose state machine sends nothing after a GOAWAY: a
        # graceful one must let the streams it promised finish.
        self.flush()
        if not self.lost:
            self.transport.write(GoAwayFrame(0, last_stream_id=last, error_code=ErrorCodes.NO_ERROR).serialize())

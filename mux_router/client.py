"""A client connection as an asyncio Protocol: the transport that drives the connection's
exchange machine (exchange.Exchange) for every request, simple or not, and carries out what it
asks (writes, timers, backend connections, the close, the tunnel after a 101)."""
from __future__ import annotations

import asyncio

from mux_router import access_log
from mux_router.backend_side import BackendSide
from mux_router.deadline import Deadline, ExchangeDeadlines
from mux_router.exchange import Exchange
from mux_router.h2_connection import H2Connection
from mux_router.peer import Peer
from mux_router.tunnel import Tunnel

LINGER_TIME = 2.0              # reading (and dropping) a client's unread input before closing ...
LINGER_BYTES = 256 * 1024      # ... so that the kernel does not RST away our last answer


class ClientProtocol(BackendSide, ExchangeDeadlines, asyncio.Protocol):

    def __init__(self, router, listener):
        self.router = router
        self.listener = listener        # as of the accept; the connection follows reloads of its address
        self._init_backend_side()
        self.tunnel: Tunnel | None = None
        self.write_paused = self.lost = False
        self.lingering = -1             # bytes dropped since the linger began; -1: not lingering

    # ---- asyncio callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = loop = asyncio.get_running_loop()
        # TCP_NODELAY is the event loop's default on TCP transports (tests/unit/test_event_loop.py).
        self.closed = loop.create_future()
        self.peer = Peer(self.router, self.listener, transport.get_extra_info("peername"))
        self.exchange = Exchange(self.router, self.peer, self, self.listener.proxy_protocol)
        self.timer = Deadline(loop, self._client_timed_out)
        self.server_timer = Deadline(loop, self.exchange.server_timeout)
        self.router.connections.add(self)
        self.exchange.start()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
        elif self.lingering >= 0:
            self.lingering += len(data)
            if self.lingering > LINGER_BYTES:
                self.transport.close()
        else:
            self.exchange.client_data(data)

    def eof_received(self) -> bool:
        if self.tunnel is not None:
            self.tunnel.client_eof()
        elif self.lingering >= 0:
            self.transport.close()
        else:
            self.exchange.client_eof_received()
        return True                     # keep our side open: a response may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.timer.cancel()
        self.server_timer.cancel()
        self.stop_waiting()
        if self.tunnel is not None:
            self.tunnel.client_lost(exc)
        else:
            self.exchange.client_lost()
        self.router.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused(True)

    def resume_writing(self) -> None:
        self._write_paused(False)

    def _write_paused(self, paused: bool) -> None:
        self.write_paused = paused
        if self.tunnel is None:
            self.exchange.client_write_paused(paused)
        elif paused:
            self.tunnel.client_paused()
        else:
            self.tunnel.client_resumed()

    def _client_timed_out(self) -> None:
        if self.lingering >= 0:
            self.transport.close()
        else:
            self.exchange.client_timeout()

    # ---- for Router.shutdown

    @property
    def idle(self) -> bool:
        return self.tunnel is None and self.exchange.idle

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    # ---- the exchange's io

    def to_client(self, data: bytes) -> None:
        self.transport.write(data)

    def _reading(self, on: bool) -> None:
        if not self.lost:
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def close_client(self, linger: bool) -> None:
        """Close; `linger`: the client may still be sending, so shut our side and drop its input
        for a moment, so that unread data does not make the kernel reset the connection (and lose
        the answer) before the client has read it."""
        if self.lost:
            return
        if not linger or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.lingering = 0
        self.client_reading(True, "buffer")
        self.client_reading(True, "backend")
        self.timer.set(LINGER_TIME)

    def abort_client(self) -> None:
        self.transport.abort()

    def start_tunnel(self, client_sent: bytes, backend_sent: bytes) -> None:
        """The exchange answered a WebSocket upgrade with the backend's 101: from now on the bytes
        move by the tunnel's callbacks, with the sweep's idle deadline instead of the timers."""
        conn = self.backend
        self.timer.cancel()
        self.server_timer.cancel()
        self.client_reading(True, "buffer")
        self.tunnel = Tunnel(self, self.exchange, conn.transport, client_sent, backend_sent)
        self.tunnel.start(self.exchange.client_eof, conn.done)

    def start_h2(self, data: bytes) -> None:
        """The client chose HTTP/2: its driver (h2_connection) takes the transport from here on."""
        self.timer.cancel()
        self.server_timer.cancel()
        self.router.connections.discard(self)
        driver = H2Connection(self.router, self.peer)
        self.transport.set_protocol(driver)
        driver.connection_made(self.transport)
        if data:
            driver.data_received(data)

    def drain(self) -> None:
        """Shutdown: nothing to say, each exchange ends its connection after its response."""

    def log(self, *fields) -> None:
        access_log.record(self.router, self.peer, *fields)

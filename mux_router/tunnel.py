"""A WebSocket tunnel after the backend's 101: bytes both ways by callbacks, no coroutine (thousands
may be held open for hours)."""
from __future__ import annotations

import asyncio

from mux_router import ws_keepalive

HALF_CLOSED_GRACE = 10.0        # a tunnel with one side closed waits at most this for the other


class Tunnel(asyncio.Protocol):
    """A WebSocket connection after the 101: bytes both ways between the client's and the
    backend's transports, until both sides are done (or one is and the other lingers past
    HALF_CLOSED_GRACE), or nothing moved for timeouts.tunnel. It is the backend transport's
    protocol from its start; at its end it aborts that transport."""

    __slots__ = ("client", "exchange", "backend", "router", "idle_limit", "deadline", "client_done",
                 "backend_done", "bytes_to_client", "bytes_from_client", "ended", "keepalive")

    def __init__(self, client, exchange, backend: asyncio.Transport, client_sent: bytes = b"",
                 backend_sent: bytes = b""):
        """`client_sent`, `backend_sent`: what already passed each way after the two heads."""
        self.client, self.exchange, self.backend = client, exchange, backend
        self.router = client.router
        self.idle_limit = exchange.config.timeouts.tunnel
        self.client_done = self.backend_done = self.ended = False
        self.bytes_to_client = self.bytes_from_client = 0
        # >>> ws_keepalive hook (tunnel_ping): the router's pings, and the client's pongs to them
        interval = ws_keepalive.ping_interval(exchange.config, exchange.app)
        self.keepalive = (ws_keepalive.Keepalive(interval, client.loop.time(), client_sent, backend_sent)
                          if interval else None)
        # <<< ws_keepalive hook

    def start(self, client_done: bool, backend_done: bool) -> None:
        self.router.stats.tunnels += 1
        self.backend.set_protocol(self)
        if self.client.write_paused:
            self.backend.pause_reading()
        # Its idle deadline is swept with all the others' (frontgate.sweep): no timer of its own.
        self._activity()
        self.router.tunnel_sweep.add(self)
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
        if not client.lost:
            client.transport.close()
        self.exchange.tunnel_ended(note, self.bytes_to_client, self.bytes_from_client)

"""SNI passthrough: a client connection whose ClientHello names a [[passthrough]] route is relayed,
undecrypted, to the route's backend (with a PROXY v2 header when the route asks for one)."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from frontgate import proxy_protocol
from frontgate.config import PassthroughRoute
from tls_terminator.client_side import ClientSide, is_drain_idle
from tls_terminator.upstream import RouterSide, client_addresses, connect_upstream

if TYPE_CHECKING:
    from tls_terminator.terminator import Terminator

log = logging.getLogger("tls-terminator")


class PassthroughConnection(ClientSide):
    """A client whose SNI matched a [[passthrough]] route: its bytes, ClientHello first, go to the
    route's backend undecrypted (optionally after a PROXY v2 header), and the backend's come back.
    The client's EOF is passed on; the backend's EOF (or close) ends the connection."""

    def __init__(self, terminator: "Terminator", transport: asyncio.Transport, route: PassthroughRoute,
                 server_name: str | None, first_bytes: bytes):
        self.terminator = terminator
        self.loop = terminator.loop
        self.idle_timeout = terminator.cfg.idle_timeout
        self.transport = transport
        self.route = route
        self.server_name = server_name
        self.early: bytearray | None = bytearray(first_bytes)
        self.upstream: RouterSide | None = None
        self.client_done = False
        self.closed = False
        self.last_activity = self.loop.time()
        self.awaiting_backend = bool(first_bytes)    # client bytes went on, none came back since
        self.connect_task: asyncio.Task | None = None

    def start(self) -> None:
        self.pause_client_reading("connecting")
        self.terminator.idle_sweep.add(self)
        self.connect_task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        target = self.route.backend
        try:
            reason = await connect_upstream(self.loop, target, self)
            if reason is not None:
                self.terminator.router_unreachable(f"cannot reach passthrough backend {target} for "
                                                   f"{self.server_name}: {reason}; closing the client connection")
                self.close()
        finally:
            self.connect_task = None

    # ---- the client

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = self.loop.time()
        self.bytes_in += len(data)
        self.awaiting_backend = True
        if self.upstream is not None:
            self.upstream.write(data)
        elif self.early is not None:
            self.early += data

    def eof_received(self) -> bool:
        self.client_done = True
        if self.upstream is not None:
            self.upstream.write_eof()
        return True

    # ---- the backend (RouterSide calls these)

    def upstream_connected(self, upstream: "RouterSide") -> None:
        if self.closed:
            upstream.close()
            return
        self.upstream = upstream
        header = b""
        if self.route.proxy_protocol:
            family, src, dst = client_addresses(self.transport.get_extra_info("peername"),
                                                self.transport.get_extra_info("sockname"))
            header = proxy_protocol.encode(proxy_protocol.ProxyHeader(
                command="PROXY", family=family, src=src, dst=dst, authority=self.server_name))
        early, self.early = self.early or b"", None
        upstream.write(header + bytes(early))
        if self.client_done:
            upstream.write_eof()
        self.resume_client_reading("connecting")

    def to_client(self, data: bytes) -> None:
        if not self.closed:
            self.last_activity = self.loop.time()
            self.awaiting_backend = False
            self.bytes_out += len(data)
            self.transport.write(data)

    def upstream_finished(self) -> None:
        self.close()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        self.close(abort=exc is not None)

    # ---- timers and closing

    def close_if_idle(self, now: float) -> None:
        """SIGTERM drain: the same test as ClientConnection's, on the raw TLS bytes."""
        if is_drain_idle(self.last_activity, self.awaiting_backend, now):
            self.close()

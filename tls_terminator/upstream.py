"""The terminator's side toward the router (or a passthrough backend): the connect, the PROXY v2
header's addresses, and the RouterSide protocol that relays the answer back to the client."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from frontgate.addresses import parse_ip
from frontgate.config import Address

if TYPE_CHECKING:
    from tls_terminator.connection import ClientConnection
    from tls_terminator.passthrough import PassthroughConnection

log = logging.getLogger("tls-terminator")

CONNECT_TIMEOUT = 5.0      # the router is local: if it does not answer by then, it is not there


class RateLimitedWarning:
    """One log line per `interval` for an event that can happen per connection (router down),
    counting the ones it held back."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self.last: float | None = None
        self.suppressed = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more like this since the last report)" if self.suppressed else ""
        log.warning(message + more)
        self.last, self.suppressed = now, 0


def client_addresses(peer, sock) -> tuple[str, tuple[str, int] | None, tuple[str, int] | None]:
    """(family, src, dst) for the PROXY header from a transport's peername and sockname.
    IPv4 clients of a dual-stack [::] listener show up as ::ffff:a.b.c.d; they are sent as TCP4."""
    if not (isinstance(peer, tuple) and isinstance(sock, tuple)):
        return "UNSPEC", None, None          # unix socket listener: no client address to tell
    if ":" not in peer[0] and ":" not in sock[0]:
        return "TCP4", peer[:2], sock[:2]    # an IPv4 listener: the loop's dotted quads as they are
    src, dst = parse_ip(peer[0]), parse_ip(sock[0])      # both ends of a socket: both mapped or neither
    family = "TCP4" if src.version == 4 else "TCP6"
    return family, (str(src), peer[1]), (str(dst), sock[1])


async def connect_upstream(loop: asyncio.AbstractEventLoop, target: Address,
                           client: "ClientConnection | PassthroughConnection") -> str | None:
    """Connect a RouterSide for `client` to `target` (the router, or a passthrough backend); None
    when connected, else why not."""
    try:
        if target.is_unix:
            coro = loop.create_unix_connection(lambda: RouterSide(client), target.path)
        else:
            coro = loop.create_connection(lambda: RouterSide(client), target.host, target.port)
        async with asyncio.timeout(CONNECT_TIMEOUT):     # in this task: wait_for would start another
            await coro
    except (OSError, asyncio.TimeoutError) as e:
        return "timed out" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
    return None


class _Detached:
    """Where a RouterSide's last events go once its client has let it go (and aborted it): nowhere.
    Nothing was ever written to it, so only what an aborted transport can still deliver arrives."""

    def to_client(self, data: bytes) -> None:
        pass

    def upstream_finished(self) -> None:
        pass

    def upstream_lost(self, exc: Exception | None) -> None:
        pass


DETACHED = _Detached()


class RouterSide(asyncio.Protocol):
    """The plaintext connection to the router (or, for a PassthroughConnection, the raw one to its
    backend); everything it hears goes to its client side."""

    def __init__(self, client: "ClientConnection | PassthroughConnection"):
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.client.upstream_connected(self)

    def data_received(self, data: bytes) -> None:
        self.client.to_client(data)

    def eof_received(self) -> bool:
        self.client.upstream_finished()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client.upstream_lost(exc)

    def pause_writing(self) -> None:
        # The router reads slower than the client sends: stop reading from the client.
        self.client.pause_client_reading("router busy")

    def resume_writing(self) -> None:
        self.client.resume_client_reading("router busy")

    # ---- used by the ClientConnection

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self, abort: bool = False) -> None:
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

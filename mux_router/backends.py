"""Backend connections: the Protocol on each, the pool of idle kept-alive ones per server, and the
dispatch of a request to one (balancer order, server slot or the maxconn queue, a pooled
connection or a connect with retries and redispatch, passive-health marks).

A request whose server has a free slot and an idle pooled connection is dispatched at once,
without a coroutine; only real waiting (a connect, the queue) runs in a task.
"""
from __future__ import annotations

import asyncio
import logging
import time

from frontgate.config import App, Server
from mux_router import backend_proxy

log = logging.getLogger("mux-router")

# Idle kept-alive connections per backend server. Above the requests one server has in flight at
# once (an HTTP/2 client alone runs 100 streams per connection), or each burst's released
# connections beyond it are closed and opened again for the next one; the idle timeout (sweep)
# is what bounds an idle pool.
POOL_MAX_IDLE = 1024


class BackendConnection(asyncio.Protocol):
    """One connection to a backend server. While it serves an exchange, `client` (the client
    connection's protocol) gets its events; idle in the pool, anything it hears makes it unusable."""

    __slots__ = ("server", "transport", "client", "idle_since", "reused", "done")

    def __init__(self, server: Server):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.client = None
        self.idle_since = 0.0
        self.reused = False
        self.done = False               # closed, or the server said something while idle

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client.exchange.backend_data(data)
        else:
            self.done = True            # an idle server that sends something is closing, or broken

    def eof_received(self) -> bool:
        self.done = True
        client = self.client
        if client is not None:
            client.exchange.backend_closed(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        client = self.client
        if client is not None:
            client.exchange.backend_closed(str(exc) if exc is not None else None)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.backend_write_paused(True)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.backend_write_paused(False)

    def abort(self) -> None:
        self.done = True
        self.transport.abort()

    def usable(self) -> bool:
        return not (self.done or self.transport.is_closing())


class BackendPool:
    """Connections to backend servers, kept alive between requests: `take_idle` hands out the most
    recently used idle connection to a server, `release(conn, reusable=True)` takes one back after
    a complete response. Idle connections older than timeouts.keep_alive, or that the server
    closed meanwhile, are dropped."""

    def __init__(self, idle_timeout: float):
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[BackendConnection]] = {}     # by the address's text

    def take_idle(self, server: Server) -> BackendConnection | None:
        idle = self._idle.get(server.address.text)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if conn.usable() and now - conn.idle_since < self.idle_timeout:
                    conn.reused = True
                    return conn
                conn.abort()
        return None

    async def connect(self, server: Server, timeout: float, greeting: bytes = b"") -> BackendConnection:
        """A new connection; `greeting`: what it starts with (backend_proxy: a PROXY header, which
        makes the connection its client's own: `release` never pools it)."""
        address = server.address
        loop = asyncio.get_running_loop()
        conn = BackendConnection(server)
        async with asyncio.timeout(timeout):
            if address.is_unix:
                await loop.create_unix_connection(lambda: conn, address.path)
            else:
                await loop.create_connection(lambda: conn, address.host, address.port)
        if greeting:
            conn.transport.write(greeting)
        return conn

    def release(self, conn: BackendConnection, reusable: bool) -> None:
        """Done with a connection; `reusable`: its response was complete and the server keeps it."""
        conn.client = None
        if not reusable or conn.server.send_proxy or not conn.usable():
            conn.abort()
            return
        idle = self._idle.get(conn.server.address.text)
        if idle is None:
            idle = self._idle[conn.server.address.text] = []
        if len(idle) >= POOL_MAX_IDLE:
            idle.pop(0).abort()             # the oldest goes
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def sweep(self) -> None:
        """Close idle connections past the idle timeout (called periodically)."""
        limit = time.monotonic() - self.idle_timeout
        for address, idle in list(self._idle.items()):
            keep = [c for c in idle if c.idle_since > limit and c.usable()]
            for c in idle:
                if c not in keep:
                    c.abort()
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]

    def close_all(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                c.transport.close()
        self._idle.clear()

    def idle_count(self, address) -> int:
        return len(self._idle.get(address.text, ()))


class QueueFull(Exception):
    """No server slot within timeouts.queue (or the queue is at its length limit): 503."""


def dispatch(router, client, app: App, hash_key: bytes) -> None:
    """Find a backend connection for the client's request to `app`; the exchange hears of it by
    backend_ready or dispatch_failed, at once when a slot and a pooled connection are free."""
    servers = router.server_order(app, hash_key)
    exchange = client.exchange
    if not servers:
        exchange.dispatch_failed(503, f"no server of {app.name} is up", "SC")
        return
    slot = router.claim_slot(app, servers)
    if slot is not None:
        conn = router.backends.take_idle(slot.server)
        if conn is not None:
            router.stats.fast_path += 1
            client.attach(conn, app, servers, slot)
            exchange.backend_ready(app.server_key(conn.server), True, 0.0, 0.0)
            return
    client.waiting = asyncio.get_running_loop().create_task(_wait_and_connect(router, client, app, servers, slot))


async def _wait_and_connect(router, client, app: App, servers: list[Server], slot) -> None:
    """The slow part of a dispatch: a slot from the queue when every server is full, then a
    connection: pooled, or connected with retries."""
    exchange = client.exchange
    config = exchange.config
    queued = time.monotonic()
    if slot is None:
        try:
            slot = await router.take_slot(app, servers, config.timeouts.queue)
        except QueueFull as e:
            client.waiting = None
            exchange.dispatch_failed(503, f"no free server slot for {app.name} ({e})", "sQ",
                                     (time.monotonic() - queued) * 1000)
            return
    t_queue = (time.monotonic() - queued) * 1000
    await _connect(router, client, app, servers, slot, t_queue, fresh=False)


def redo_fresh(router, client, app: App, servers: list[Server], slot) -> None:
    """A reused connection turned out closed before anything happened on it: the same slot's
    server once more on a fresh connection, with the connect's retries and redispatch."""
    client.waiting = asyncio.get_running_loop().create_task(
        _connect(router, client, app, servers, slot, 0.0, fresh=True))


async def _connect(router, client, app: App, servers: list[Server], slot, t_queue: float, fresh: bool) -> None:
    """A connection to the slot's server; on failure up to app.retries more attempts, each on the
    next server (redispatch) or the same one. Only connects are retried: nothing of the request
    has been sent yet."""
    config = client.exchange.config
    started = time.monotonic()
    tried: list[Server] = []
    termination = "SC"
    attempts = app.retries
    done = 0
    conn = None
    try:
        for attempt in range(attempts + 1):
            server = slot.server
            tried.append(server)
            conn = None if fresh else router.backends.take_idle(server)
            try:
                if conn is None:
                    peer = client.peer
                    greeting = backend_proxy.greeting(server, *peer.client, peer.address, peer.sni)
                    conn = await router.backends.connect(server, config.timeouts.connect, greeting)
                slot.refused_in_row = 0
                break
            except (OSError, TimeoutError) as e:
                reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
                log.warning("%s/%s: connect failed: %s", app.name, server.address, reason)
                router.connect_failed(app, slot, refused=isinstance(e, ConnectionRefusedError))
                router.stats.connect_error(app.name, str(server.address), e)
                termination = "sC" if isinstance(e, TimeoutError) else "SC"
            if attempt == attempts:
                break
            done += 1
            router.stats.retry(app.name)
            others = [s for s in servers if s not in tried and not router.is_down(app, s)]
            if app.redispatch and others:
                other = router.claim_slot(app, others)
                if other is not None:
                    router.release_slot(app, slot)
                    slot = other
    except BaseException:
        router.release_slot(app, slot)      # cancelled: the client went away
        raise
    client.waiting = None
    t_connect = (time.monotonic() - started) * 1000
    if conn is None:
        router.release_slot(app, slot)
        client.exchange.dispatch_failed(502, f"no server of {app.name} answered", termination, t_queue,
                                        t_connect, done)
        return
    client.attach(conn, app, servers, slot)
    client.exchange.backend_ready(app.server_key(conn.server), conn.reused, t_queue, t_connect, done)

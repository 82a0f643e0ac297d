"""The mux-router's I/O: listeners, client connections, backend exchanges, WebSocket tunnels.

Protocol decisions live in the pure modules (http1: framing, routing: apps and redirects,
balancer: server order, forwarding: the heads we write); this module moves bytes between sockets
with backpressure (every write is followed by a bounded drain) and never holds a whole body.

A client connection is a fastpath.ClientProtocol: it serves simple requests itself and hands
every other one, with its bytes, to ClientConnection.serve_one here (the coroutine engine), one
request at a time. Each request is routed on its own, so two requests on one keep-alive
connection may go to two apps. Backend connections are kept alive and pooled per
server (BackendPool); per-server slots (ServerSlot) count requests in flight for maxconn, the
queue and leastconn, and refused connects for passive health.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import signal
import time
from dataclasses import dataclass

from frontgate import proxy_protocol
from frontgate.config import Address, App, ConfigError, Listener, RouterConfig, Server, load_router_config
from frontgate.health_state import StateFollower
from frontgate.restart_keys import admin_changes, refuse_restart_changes
from frontgate.addresses import parse_ip
from frontgate.logfields import escape_field
from frontgate.process_status import ProcessStatus
from frontgate.sockets import inherited_unix_listener, remove_stale_socket
from frontgate.sweep import Sweep, interval_for
from mux_router import access_log, backend_proxy, forwarding
from mux_router.balancer import Hashed, LeastConn, RoundRobin
from mux_router.fastpath import HALF_CLOSED_GRACE, READ_SIZE, ClientProtocol, DetachableWriter, Routed
from mux_router.http1 import (CHUNKED, CLOSE, LENGTH, NO_BODY, NO_TOKENS, ChunkedDecoder, HttpError, RequestHead,
                              RequestHeadParser, ResponseHead, ResponseHeadParser)
from mux_router.request_trailers import TrailerFilter
from mux_router.live_routes import LiveRoutes
from mux_router.routing import Refusal, client_cert_line, decide, ip_in, sni_host
from mux_router.stats import RouterAdmin, RouterStats

log = logging.getLogger("mux-router")

STATE_REFRESH_INTERVAL = 0.5   # how often the health state file is stat'ed
LINGER_TIME = 2.0              # reading (and dropping) a client's unread input before closing ...
LINGER_BYTES = 256 * 1024      # ... so that the kernel does not RST away our error response
UPLOAD_FINISH_WAIT = 2.0       # response sent, request body still arriving: how long to wait for it
MAX_SERVER_WAITS = 100000     # bound on server-timeout periods spent waiting for a slow upload
POOL_MAX_IDLE = 64             # idle kept-alive connections per backend server
MAX_QUEUE = 4096               # requests waiting for a server slot, per app; more: 503 at once
PASSIVE_RETRY = 10.0           # a passively marked-down server is tried again after this when no
                               # fresh checker state can bring it back


class ClientGone(Exception):
    """The client closed, reset, or stalled past its timeout: nothing more can be sent to it."""


class BackendFailed(Exception):
    """The backend closed, reset, stalled or sent garbage after the response had started.
    `silent`: not one byte of a response came before (a pooled connection's close and reset race)."""

    def __init__(self, reason: str, silent: bool = False):
        super().__init__(reason)
        self.silent = silent


# --------------------------------------------------------------------------- backend connections

class BackendProtocol(asyncio.StreamReaderProtocol):
    """A backend connection's protocol: feeds its StreamReader for the coroutine engine, or, while
    a fast-path exchange holds it (`sink`), hands the bytes straight to that exchange."""

    sink = None

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.backend_data(data)
        else:
            super().data_received(data)

    def eof_received(self):
        keep_open = super().eof_received()
        if self.sink is not None:
            self.sink.backend_eof()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.sink is not None:
            self.sink.backend_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.sink is not None:
            self.sink.backend_write_paused(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.sink is not None:
            self.sink.backend_write_paused(False)


@dataclass
class BackendConnection:
    server: Server
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: BackendProtocol
    reused: bool = False
    idle_since: float = 0.0

    def __post_init__(self) -> None:
        self.transport: asyncio.Transport = self.writer.transport    # the fast path writes to it directly

    def abort(self) -> None:
        self.transport.abort()

    def usable(self) -> bool:
        """Still open, and the server has sent nothing since its last response (an idle server
        that sends something is closing, or broken)."""
        reader = self.reader
        return not (self.transport.is_closing() or reader._eof or reader._buffer)     # noqa: SLF001


class BackendPool:
    """Connections to backend servers, kept alive between requests: `acquire` hands out the most
    recently used idle connection to that server (or opens one), `release(conn, reusable=True)`
    takes a connection back after a complete response. Idle connections older than
    timeouts.keep_alive, or that the server closed meanwhile, are dropped."""

    keeps_alive = True

    def __init__(self, idle_timeout: float):
        self.idle_timeout = idle_timeout
        # By the address's text: formatted once (Address), its hash cached by str.
        self._idle: dict[str, list[BackendConnection]] = {}

    def take_idle(self, server: Server) -> BackendConnection | None:
        """The most recently used idle connection to the server that is still good, if any."""
        idle = self._idle.get(server.address.text)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since < self.idle_timeout:
                conn.reused = True
                return conn
            conn.abort()
        return None

    async def acquire(self, server: Server, timeout: float, fresh: bool = False,
                      greeting: bytes = b"") -> BackendConnection:
        """`greeting`: what a new connection starts with (backend_proxy: a PROXY header, which
        makes the connection its client's own: never taken from or given to the pool)."""
        conn = None if fresh or greeting else self.take_idle(server)
        if conn is not None:
            return conn
        address = server.address
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
        protocol = BackendProtocol(reader, loop=loop)
        async with asyncio.timeout(timeout):
            if address.is_unix:
                transport, _ = await loop.create_unix_connection(lambda: protocol, address.path)
            else:
                transport, _ = await loop.create_connection(lambda: protocol, address.host, address.port)
        if greeting:
            transport.write(greeting)
        return BackendConnection(server, reader, DetachableWriter(transport, protocol, reader, loop), protocol)

    def release(self, conn: BackendConnection, reusable: bool = False) -> None:
        """Done with a connection. `reusable`: its response was complete, the server keeps it open
        and nothing of the request is still on its way. Callers abort() a broken connection."""
        if not reusable or conn.server.send_proxy or not conn.usable():
            conn.writer.close()
            return
        idle = self._idle.setdefault(conn.server.address.text, [])
        if len(idle) >= POOL_MAX_IDLE:
            idle.pop(0).writer.close()      # the oldest goes
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def sweep(self) -> None:
        """Close idle connections past the idle timeout (called periodically)."""
        limit = time.monotonic() - self.idle_timeout
        for address, idle in list(self._idle.items()):
            keep = [c for c in idle if c.idle_since > limit and c.usable()]
            for c in idle:
                if c not in keep:
                    c.writer.close()
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]

    def close_all(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                c.writer.close()
        self._idle.clear()

    def idle_count(self, address: Address) -> int:
        return len(self._idle.get(address.text, ()))


class ServerSlot:
    """What the router itself knows about one server of one app: requests in flight (maxconn,
    leastconn) and refused connects in a row (passive health)."""

    def __init__(self, server: Server):
        self.server = server
        self.active = 0
        self.refused_in_row = 0
        self.down_since: float | None = None       # wall clock: compared with the checker's writes

    @property
    def full(self) -> bool:
        return self.server.maxconn > 0 and self.active >= self.server.maxconn


_STALE = object()       # Exchange._exchange: the reused connection was already closed
_NO_RESPONSE = "backend closed the connection without a response"


class QueueFull(Exception):
    """No server slot within timeouts.queue (or the queue is at its length limit): 503."""


# --------------------------------------------------------------------------- the router

class Router:
    def __init__(self, config: RouterConfig, status: ProcessStatus | None = None):
        self.status = status or ProcessStatus(None, "mux-router", config.path)   # reload outcomes
        self.routes = LiveRoutes(config, self.status)     # dynamic routes: served after the static apps
        config = self.routes.merge(config)
        self.config = config
        self.health = StateFollower(config.state_file, config.state_stale_after)
        self.slots: dict[str, ServerSlot] = {}
        self.balancers: dict[str, RoundRobin | LeastConn | Hashed] = {}
        self.queues: dict[str, collections.deque] = {}
        self._set_apps(config.apps)
        self.backends = BackendPool(config.timeouts.keep_alive)
        self.listeners: dict[Address, Listener] = {}     # by address: a reload may rename or retune
        self.servers: dict[Address, asyncio.Server] = {}
        self.shared_sockets: set[Address] = set()      # unix listeners supervisord passed in: never unlinked
        self.connections: set[ClientProtocol] = set()
        self.tunnel_sweep: Sweep | None = None         # WebSocket tunnels' idle deadlines (from start)
        self.stopping = False
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()         # background tasks, referenced until done
        self.stats = RouterStats()                     # counters: plain ints, read by the admin listener
        self.admin = RouterAdmin(self)                 # [admin]: /metrics, /stats (inert without it)

    # ---- lifecycle

    async def start(self) -> None:
        access_log.use(access_log.open_target(self.config.access_log_file, self.config.access_log != "off"))
        self.tunnel_sweep = Sweep(asyncio.get_running_loop(), self._tunnel_sweep_interval(self.config))
        for listener in self.config.listeners:
            self.servers[listener.address] = await self._bind(listener)
            self.listeners[listener.address] = listener
            log.info("listening on %s (%s)", listener.address, listener_settings(listener))
        self.health.refresh()
        await self.admin.start()        # the admin listener and the 1 s snapshot task, with [admin]

    @staticmethod
    def _tunnel_sweep_interval(config: RouterConfig) -> float:
        return interval_for(min(config.timeouts.tunnel, HALF_CLOSED_GRACE))

    async def _bind(self, listener: Listener) -> asyncio.Server:
        address = listener.address
        loop = asyncio.get_running_loop()

        def new_connection() -> ClientProtocol:
            # The address's settings as of now, not as of the bind: a reload that changed them
            # (proxy_protocol, scheme, ...) applies to every connection accepted after it.
            return ClientProtocol(self, self.listeners.get(address, listener), ClientConnection)

        if address.is_unix:
            shared = inherited_unix_listener(address.path)
            if shared is not None:
                self.shared_sockets.add(address)
                return await loop.create_unix_server(new_connection, sock=shared)
            if self.config.workers > 1:
                # Binding it here would take the path from the worker that bound it first.
                raise OSError(f"{address} is shared by {self.config.workers} workers only as a socket "
                              "supervisord passes them (fcgi-program, as `frontgate supervisord-conf` writes it)")
            remove_stale_socket(address.path)
            return await loop.create_unix_server(new_connection, address.path, backlog=1024)
        # SO_REUSEPORT: several worker processes (supervisord numprocs) share the port, and a
        # restarted worker can bind while the old one still drains.
        return await loop.create_server(new_connection, address.host, address.port, reuse_port=True, backlog=1024)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)      # logrotate moved the file
        refresher = asyncio.create_task(self._follow_health())
        self._spawn(self.routes.follow(self))
        await self._stop.wait()
        refresher.cancel()
        await self.shutdown()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_health(self) -> None:
        while True:
            await asyncio.sleep(STATE_REFRESH_INTERVAL)
            try:
                self.health.refresh()
                self.backends.sweep()
            except Exception:   # never let a bad file stop the follower; StateFollower logs its own
                log.exception("health state refresh failed")

    async def shutdown(self) -> None:
        """Stop accepting, close idle connections, give in-flight requests router.grace seconds."""
        grace = self.config.grace      # as of now: a reload may have changed it
        self.stopping = True
        for server in self.servers.values():
            server.close()
        busy = {}
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
            else:
                busy[conn.closed] = conn
        log.info("stopping: %d connections in flight", len(busy))
        if busy:
            done, pending = await asyncio.wait(busy, timeout=grace)
            for closed in pending:
                busy[closed].abort()
            if pending:
                log.warning("stopping: %d connections cut after the %gs grace", len(pending), grace)
                await asyncio.wait(pending, timeout=1)
        self.backends.close_all()
        access_log.flush()
        await self.admin.stop()         # last: the page answers during the drain; removes our snapshot
        for address in self.listeners:
            if address.is_unix and address not in self.shared_sockets:     # a shared one is supervisord's
                with contextlib.suppress(OSError):
                    os.unlink(address.path)

    async def reload(self) -> None:
        """SIGHUP: re-read the config; keep the running one if the new one is invalid or cannot
        bind its listeners."""
        async with self._reload_lock:
            path = self.config.path
            fingerprint = self.status.config_on_disk()
            try:
                new = load_router_config(path)
                refuse_restart_changes(path, admin_changes(self.config.admin, new.admin))
                log_target = access_log.open_target(new.access_log_file, new.access_log != "off")
            except (ConfigError, OSError) as e:
                self._refuse_reload(str(e) if isinstance(e, ConfigError) else e.strerror)
                return
            by_address = {l.address: l for l in new.listeners}
            added: dict[Address, asyncio.Server] = {}
            try:
                for address, listener in by_address.items():
                    if address not in self.servers:
                        added[address] = await self._bind(listener)
            except OSError as e:
                for server in added.values():
                    server.close()
                access_log.discard(log_target)
                self._refuse_reload(f"cannot listen on {address}: {e.strerror or e}")
                return
            access_log.use(log_target)
            for address in list(self.servers):
                if address not in by_address:
                    self.servers.pop(address).close()
            self.servers.update(added)
            for address, listener in by_address.items():
                if address in self.listeners and listener != self.listeners[address]:
                    log.info("listener %s changed, for new connections: %s", address, listener_settings(listener))
            self.listeners = by_address
            self.admin.admin = new.admin        # `refresh`; the rest is refused above unless unchanged
            new = self.routes.merge(new)
            self._set_apps(new.apps)
            self.backends.idle_timeout = new.timeouts.keep_alive
            self.tunnel_sweep.interval = self._tunnel_sweep_interval(new)
            if (new.state_file, new.state_stale_after) != (self.config.state_file, self.config.state_stale_after):
                self.health = StateFollower(new.state_file, new.state_stale_after)
                self.health.refresh()
            self.config = new
            log.info("reloaded %s: %d listeners, %d apps, %d redirect rules", path, len(new.listeners),
                     len(new.apps), len(new.redirects))
            self.status.reloaded(fingerprint)

    def _refuse_reload(self, problem: str) -> None:
        log.error("reload failed, keeping the running config: %s", problem)
        self.status.reloaded(error=f"keeping the running config: {problem}")

    # ---- helpers for connections

    def _set_apps(self, apps) -> None:
        """Balancers and slots for the apps; those of unchanged apps and servers survive a reload
        (round-robin positions, counts of requests in flight, passive down marks)."""
        slots = {}
        for app in apps:
            for server in app.servers:
                key = app.server_key(server)
                slot = self.slots.get(key) or ServerSlot(server)
                slot.server = server
                slots[key] = slot
        self.slots = slots
        kinds = {"roundrobin": RoundRobin, "leastconn": LeastConn, "source": Hashed, "uri": Hashed}
        balancers = {}
        for app in apps:
            old = self.balancers.get(app.name)
            if old is not None and old.servers == app.servers and type(old) is kinds[app.balance]:
                balancers[app.name] = old
            elif app.balance == "leastconn":
                balancers[app.name] = LeastConn(app.servers, lambda s, app=app: self.slots[app.server_key(s)].active)
            else:
                balancers[app.name] = kinds[app.balance](app.servers)
        self.balancers = balancers
        self.queues = {app.name: self.queues.get(app.name, collections.deque()) for app in apps}

    def server_order(self, app: App, hash_key: bytes = b"") -> list[Server]:
        balancer = self.balancers[app.name]
        is_down = functools.partial(self.is_down, app)
        if isinstance(balancer, Hashed):
            return balancer.order(hash_key, is_down)
        return balancer.order(is_down)

    def is_down(self, app: App, server: Server) -> bool:
        key = app.server_key(server)
        slot = self.slots.get(key)
        if slot is not None and slot.down_since is not None and self._still_passively_down(key, slot):
            return True
        return self.health.is_down(key)

    def _still_passively_down(self, key: str, slot: ServerSlot) -> bool:
        """A server marked down for refusing connects comes back when the checker has seen it up
        since (its `since` is later), or after PASSIVE_RETRY when the checker does not say down
        (no checker running, or it never noticed the outage)."""
        now = time.time()
        entry = self.health.entry(key)
        if entry is not None and entry.state != "up":
            return True
        if (entry is not None and entry.since > slot.down_since) or now - slot.down_since >= PASSIVE_RETRY:
            log.info("%s: back in service after being marked down for refused connects", key)
            slot.down_since, slot.refused_in_row = None, 0
            return False
        return True

    def connect_failed(self, app: App, slot: ServerSlot, refused: bool) -> None:
        if not refused or app.passive_fall == 0:
            return
        slot.refused_in_row += 1
        if slot.refused_in_row >= app.passive_fall and slot.down_since is None:
            slot.down_since = time.time()
            log.warning("%s: marked down after %d refused connects in a row", app.server_key(slot.server),
                        slot.refused_in_row)

    # ---- server slots: maxconn and the queue

    def claim_slot(self, app: App, servers: list[Server]) -> ServerSlot | None:
        """A slot on the first of `servers` below its maxconn, at once; None when all are full."""
        for server in servers:
            slot = self.slots[app.server_key(server)]
            if not slot.full:
                slot.active += 1
                return slot
        return None

    async def take_slot(self, app: App, servers: list[Server], timeout: float) -> ServerSlot:
        """A slot on the first of `servers` below its maxconn; else wait in the app's queue (FIFO)
        for one to be handed over, at most `timeout` seconds. QueueFull when none came."""
        slot = self.claim_slot(app, servers)
        if slot is not None:
            return slot
        queue = self.queues[app.name]
        if len(queue) >= MAX_QUEUE:
            raise QueueFull("queue full")
        future = asyncio.get_running_loop().create_future()
        waiter = (future, frozenset(servers))
        queue.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except BaseException as e:
            if future.done() and not future.cancelled():
                self.release_slot(app, future.result())     # handed over as we gave up: pass it on
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            if isinstance(e, TimeoutError):
                raise QueueFull("queue timeout") from None
            raise

    def release_slot(self, app: App, slot: ServerSlot) -> None:
        """The request is done with the server: hand the slot to the first waiter that can use
        this server, else free it."""
        queue = self.queues.get(app.name)
        if queue:
            for waiter in queue:
                future, servers = waiter
                if slot.server in servers and not future.done():
                    queue.remove(waiter)
                    future.set_result(slot)
                    return
        slot.active -= 1


def listener_settings(listener: Listener) -> str:
    """A listener's settings for the log: its name, scheme and what it requires."""
    text = f"{listener.name}, {listener.scheme}"
    if listener.proxy_protocol:
        text += ", PROXY v2 required" + ("" if listener.sni_host_check else ", no SNI host check")
    return text


# --------------------------------------------------------------------------- client connections

class ClientConnection:
    """A client connection's state (who, from the socket or the PROXY header; requests so far)
    and the coroutine engine that serves one request at a time when the fast path
    (fastpath.ClientProtocol, which owns the socket) hands it over."""

    def __init__(self, router: Router, listener: Listener, transport: asyncio.BaseTransport):
        self.router = router
        self.address = listener.address
        self._listener = listener       # as bound; `listener` gives the current settings
        self._listeners_seen: dict | None = None
        self._current_listener = listener
        self.reader: asyncio.StreamReader | None = None     # attach()ed on the first hand-over
        self.writer: asyncio.StreamWriter | None = None
        self.buf = bytearray()          # received from the client, not yet used
        peer = transport.get_extra_info("peername")
        self.peer_ip = parse_ip(peer[0]) if isinstance(peer, tuple) else None
        self.client = (str(self.peer_ip), peer[1]) if self.peer_ip is not None else ("unknown", 0)
        self.requests = 0
        self.request_started = time.monotonic()
        # From the PROXY header, computed once for all the connection's requests:
        self.sni: str | None = None                   # the SNI, normalised like RequestHead.host
        self.sni_host: str | None = None              # the SNI where the listener checks it (421)
        self.client_cert_line: bytes | None = None    # a verified certificate's X-Client-Cert-Subject
        self._trusted_in: RouterConfig | None = None  # client_trusted()'s cache
        self._trusted = False

    @property
    def listener(self) -> Listener:
        # The current settings for this address; a reload that dropped it leaves the old ones. A
        # reload replaces router.listeners, so the lookup is redone only then.
        listeners = self.router.listeners
        if listeners is not self._listeners_seen:
            self._listeners_seen = listeners
            self._current_listener = listeners.get(self.address, self._listener)
        return self._current_listener

    def peer_trusted(self) -> bool:
        # A unix socket's peers are local processes allowed in by the file's permissions.
        return self.peer_ip is None or ip_in(self.peer_ip, self.router.config.trusted_sources)

    def client_trusted(self, config: RouterConfig) -> bool:
        """The client (as the PROXY header names it) is in trusted_sources: its forwarding
        headers are believed. Asked for every request, computed once per config."""
        if self._trusted_in is not config:
            self._trusted_in, self._trusted = config, ip_in(self.peer_ip, config.trusted_sources)
        return self._trusted

    def attach(self, reader: asyncio.StreamReader | None, writer: asyncio.StreamWriter | None) -> None:
        self.reader, self.writer = reader, writer

    def take_unused(self) -> bytes:
        data, self.buf = bytes(self.buf), bytearray()
        return data

    def hash_key(self, app: App, head: RequestHead) -> bytes:
        """What the `source` and `uri` balancers hash."""
        if app.balance == "source":
            return self.peer_ip.packed if self.peer_ip is not None else b""
        if app.balance == "uri":
            return head.path.encode()
        return b""

    async def serve_one(self, need_proxy: bool, routed: Routed | None = None) -> bool:
        """Read (the PROXY header and) one request from the attached reader and serve it; True
        when the connection can carry another. `routed`: the fast path's routing decision for it."""
        try:
            if need_proxy and not await self._read_proxy_header():
                return False
            return await self._one_request(routed)
        except (ClientGone, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            return False
        except asyncio.CancelledError:
            return False        # the grace period is over
        except Exception:
            log.exception("connection from %s:%s failed", *self.client)
            return False

    # ---- PROXY v2

    async def _read_proxy_header(self) -> bool:
        if not self.peer_trusted():
            log.warning("refused %s:%s on %s: PROXY headers are accepted only from trusted_sources",
                        *self.client, self.listener.name)
            return False
        buf = bytearray()
        try:
            async with asyncio.timeout(self.router.config.timeouts.http_request):
                while (result := proxy_protocol.decode(buf)) is None:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        return False
                    buf += data
        except proxy_protocol.ProxyProtocolError as e:
            log.warning("bad PROXY header from %s:%s on %s: %s", *self.client, self.listener.name, e)
            await self._answer_and_close(400, "PROXY protocol v2 header required")
            return False
        except TimeoutError:
            return False
        header, consumed = result
        self.buf = buf[consumed:]
        self.take_proxy_header(header)
        return True

    def take_proxy_header(self, header: proxy_protocol.ProxyHeader) -> None:
        """The client's address, SNI name and certificate subject, for all the connection's requests."""
        if header.command == "PROXY" and header.src is not None:
            # LOCAL (the terminator's own health check) keeps the socket's address.
            self.peer_ip = parse_ip(header.src[0])
            self.client = (str(self.peer_ip), header.src[1])
            self._trusted_in = None
        self.sni = sni_host(header.authority)
        if self.listener.sni_host_check:
            self.sni_host = self.sni
        if header.client_cert_subject is not None:
            self.client_cert_line = forwarding.client_cert_subject_line(header.client_cert_subject)

    # ---- one request

    async def _read_head(self) -> RequestHead | None:
        """The next request head; None when the client closed or idled out between requests.
        HttpError for a malformed head, TimeoutError when it arrived too slowly (408)."""
        timeouts = self.router.config.timeouts
        parser = RequestHeadParser()
        data, self.buf = bytes(self.buf), bytearray()
        received = bool(data)
        self.request_started = time.monotonic()
        # The first request must start within http_request, a later one within the keep-alive
        # idle time; once its first byte is in, the whole head within http_request.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeouts.http_request if received or self.requests == 0 else timeouts.keep_alive)
        while True:
            if data:
                if not received:
                    received = True
                    deadline = loop.time() + timeouts.http_request
                    self.request_started = time.monotonic()     # the access log's duration starts here
                head = parser.feed(data)
                if head is not None:
                    self.buf = bytearray(parser.leftover)
                    return head
            try:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(READ_SIZE)
            except TimeoutError:
                if received:
                    raise
                return None             # nothing asked: close quietly
            if not data:
                return None             # closed, possibly mid-head: nobody to answer

    async def _one_request(self, routed: Routed | None = None) -> bool:
        """Serve one request; True when the connection can carry another."""
        try:
            head = await self._read_head()
        except HttpError as e:
            sent = await self._answer_and_close(e.status, e.reason)
            self._log(self.request_started, None, e.status, sent, "<BADREQ>", note=e.reason, termination="PR")
            return False
        except TimeoutError:
            sent = await self._answer_and_close(408)
            self._log(self.request_started, None, 408, sent, "<BADREQ>", note="request head timeout",
                      termination="cR")
            return False
        if head is None:
            return False
        self.requests += 1
        exchange = Exchange(self, head, self.request_started)
        try:
            keep = await exchange.run(routed)
        finally:
            if exchange.tunnel_backend is None:
                exchange.log()
        # A WebSocket tunnel is handed to the connection's protocol, which logs it when it ends.
        return exchange if exchange.tunnel_backend is not None else keep

    # ---- sending

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.router.config.timeouts.client):
                await self.writer.drain()
        except (ConnectionError, TimeoutError) as e:
            raise ClientGone(str(e)) from None

    async def answer(self, status: int, *, close: bool, method: str = "GET", detail: str = "",
                     location: str | None = None, page=None, retry_after: int | None = None) -> int:
        data = forwarding.simple_response(status, close=close, detail=detail, location=location,
                                          with_body=method != "HEAD", page=page, retry_after=retry_after)
        await self.send(data)
        return len(data)

    async def _answer_and_close(self, status: int, detail: str = "") -> int:
        try:
            sent = await self.answer(status, close=True, detail=detail)
        except ClientGone:
            return 0
        await self.linger()
        return sent

    async def linger(self) -> None:
        """Close after an answer while the client may still be sending: shut our side, then read
        and drop its input for a moment, so that unread data does not make the kernel reset the
        connection (and lose the answer) before the client has read it."""
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        dropped = 0
        with contextlib.suppress(OSError, TimeoutError, ConnectionError):
            async with asyncio.timeout(LINGER_TIME):
                while dropped < LINGER_BYTES:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        break
                    dropped += len(data)

    def _log(self, started: float, route: str | None, status: int, sent: int, request_line: str,
             note: str = "", termination: str = "--") -> None:
        """A request that never became an Exchange (bad or timed-out head)."""
        ms = (time.monotonic() - started) * 1000
        self.write_log(started, route, status, sent, request_line, note, termination, ms, -1, -1, -1, ms, 0)

    def log_request(self, ex: "Exchange") -> None:
        total = (time.monotonic() - ex.started) * 1000
        self.write_log(ex.started, ex.route, ex.status, ex.sent, ex.head, ex.note,
                        ex.termination, ex.t_head, ex.t_queue, ex.t_connect, ex.t_response, total, ex.retries,
                        ex.head_size + ex.body_in)

    def write_log(self, started: float, route: str | None, status: int, sent: int, request: RequestHead | str,
                   note: str, termination: str, tq: float, tw: float, tc: float, tr: float, tt: float,
                   retries: int, received: int = 0) -> None:
        """Count the request, and log it as `access_log` says. `request`: its head, or the text
        that stands for its request line; the line is made only for a log line."""
        backend, _, server = (route or "-/-").partition("/")
        router = self.router
        router.stats.request_done(backend, server, status, received, sent)
        which = router.config.access_log
        if which != "all" and (which == "off" or _normal(status, termination, retries)):
            return
        accepted = time.time() - (time.monotonic() - started)
        # Every text field escaped, in both formats alike: a client chose the target and maybe
        # the note (an SNI name, a header in an error), and must not end the line or the field.
        request_line = escape_field(request if type(request) is str else request.request_line)
        note, frontend = escape_field(note), escape_field(self.listener.name)
        backend, server = escape_field(backend), escape_field(server or "-")
        ip, port = self.client
        ip = escape_field(ip)
        if router.config.access_log_format == "json":
            access_log.access_log(json.dumps({
                "client_ip": ip, "client_port": port,
                "accept_date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(accepted)) + f".{int(accepted * 1000) % 1000:03d}Z",
                "frontend": frontend, "backend": backend, "server": server,
                "Tq": round(tq), "Tw": round(tw), "Tc": round(tc), "Tr": round(tr), "Tt": round(tt),
                "status": status, "bytes": sent, "termination_state": termination, "retries": retries,
                "request": request_line, "note": note}, separators=(",", ":")))
            return
        # HAProxy's httplog: client [accept date] frontend backend/server Tq/Tw/Tc/Tr/Tt status
        # bytes - - termination actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue "request"
        # (%-formatting: a line per request, and the fastest way Python has to make one).
        actconn = len(router.connections)
        access_log.access_log(((ip, port, int(accepted * 1000), frontend, backend, server, tq, tw, tc, tr,
                     tt, status, sent, termination, actconn, actconn, retries, request_line), note))


def _normal(status: int, termination: str, retries: int) -> bool:
    """A request that `access_log = "errors"` leaves out, as HAProxy's `option dontlog-normal`:
    answered below 500, ended normally (or by a redirect), no retry."""
    return status < 500 and termination in ("--", "LR") and not retries


# --------------------------------------------------------------------------- one request/response

class Exchange:
    """One request on a client connection: redirect, route, backend, response."""

    def __init__(self, conn: ClientConnection, head: RequestHead, started: float):
        self.conn = conn
        self.router = conn.router
        self.config = conn.router.config       # one config for the whole request, even across a reload
        self.head = head
        self.head_size = len(head.raw)
        self.started = started
        self.app: App | None = None
        self.route: str | None = None
        self.status = 0
        self.sent = 0
        self.note = ""
        self.body_done = not head.has_body     # the request body has been read to its end
        self.upload: asyncio.Task | None = None
        self.response_complete = False         # the backend's response was read to its end
        self.backend_reusable = False          # ... and the backend connection may carry another
        self.surplus = False                   # the backend sent bytes after its response
        self.retries = 0
        self.body_in = 0                       # request body (and tunnel) bytes from the client: stats
        self.tunnel_backend: BackendConnection | None = None   # after a 101: fastpath.Tunnel's to drive
        self.tunnel_prelude = (b"", b"")       # (client, backend) bytes passed before the Tunnel took over
        # HAProxy httplog timers (ms; -1 = that phase was not reached) and termination state.
        self.t_head = (time.monotonic() - started) * 1000
        self.t_queue = self.t_connect = self.t_response = -1.0
        self.termination = "--"

    def log(self) -> None:
        self.conn.log_request(self)

    def _keep_alive(self) -> bool:
        return self.head.keep_alive and self.body_done and not self.router.stopping

    async def _answer(self, status: int, detail: str = "", location: str | None = None,
                      termination: str | None = None, close: bool = False, page=None) -> bool:
        """The router's own answer instead of a backend's. Returns whether the connection stays."""
        keep = self._keep_alive() and not close
        self.status = status
        self.note = self.note or detail
        if termination is not None:
            self.termination = termination
        page = page or forwarding.error_page(status, self.app.error_pages if self.app is not None else {},
                                             self.config.error_pages)
        self.sent += await self.conn.answer(status, close=not keep, method=self.head.method,
                                            detail=detail if status >= 400 else "", location=location,
                                            page=page, retry_after=self.config.retry_after)
        if not keep:
            if self.upload is not None and not self.upload.done():
                # The answer ends the exchange: stop forwarding the body; linger drops the rest.
                self.upload.cancel()
                await asyncio.gather(self.upload, return_exceptions=True)
            await self.conn.linger()
        return keep

    async def run(self, routed: Routed | None = None) -> bool:
        """`routed`: the fast path already chose the app and the servers (and maybe a slot)."""
        if routed is not None:
            app, servers, slot = routed
            self.app, self.route = app, f"{app.name}/-"
            return await self._serve(app, servers, slot)
        head, conn, cfg = self.head, self.conn, self.config
        app = decide(cfg, head, listener=conn.listener.name, client_ip=conn.peer_ip, sni_check=conn.sni_host,
                     sni=conn.sni, cert_verified=conn.client_cert_line is not None)
        if isinstance(app, Refusal):
            refusal = app
            if refusal.app is not None:
                self.app = refusal.app
                self.route = f"{refusal.app.name}/-"
            elif refusal.route is not None:
                self.route = refusal.route
            return await self._answer(refusal.status, refusal.detail, location=refusal.location,
                                      termination=refusal.termination, close=refusal.close, page=refusal.page)
        self.app = app
        self.route = f"{app.name}/-"
        servers = self.router.server_order(app, conn.hash_key(app, head))
        if not servers:
            return await self._answer(503, f"no server of {app.name} is up", termination="SC")
        return await self._serve(app, servers)

    async def _serve(self, app: App, servers: list[Server], slot: ServerSlot | None = None) -> bool:
        """A server slot (waiting in the queue when all are full), then the backend exchange."""
        queued = time.monotonic()
        if slot is None:
            try:
                slot = await self.router.take_slot(app, servers, self.config.timeouts.queue)
            except QueueFull as e:
                self.t_queue = (time.monotonic() - queued) * 1000
                return await self._answer(503, f"no free server slot for {app.name} ({e})", termination="sQ")
        self.t_queue = (time.monotonic() - queued) * 1000
        try:
            return await self._run_on(app, servers, slot)
        finally:
            if self.tunnel_backend is None:      # a tunnel keeps its slot until tunnel_ended
                self.router.release_slot(app, self.slot)

    async def _run_on(self, app: App, servers: list[Server], slot: ServerSlot) -> bool:
        self.slot = slot
        backend = await self._connect(app, servers)
        if backend is None:       # _connect set the termination state (timeout or refused)
            return await self._answer(502, f"no server of {app.name} answered")
        self.route = f"{app.name}/{backend.server.address}"
        try:
            result = await self._exchange(backend)
            if result is _STALE:
                # A pooled connection the server had closed meanwhile, and nothing of this
                # request can have been processed (no body, no response byte): once more, fresh.
                backend.abort()
                backend = await self._connect(app, [backend.server], fresh=True)
                if backend is None:
                    return await self._answer(502, f"no server of {app.name} answered", termination="SC")
                result = await self._exchange(backend)
                if result is _STALE:
                    return await self._backend_error(502, "backend closed the connection without a response")
            return result
        finally:
            if self.upload is not None:
                self.upload.cancel()
                await asyncio.gather(self.upload, return_exceptions=True)   # collects its error too
            if self.tunnel_backend is None:      # a tunnel's connection closes in tunnel_ended
                if not self.response_complete:
                    backend.abort()         # mid-message: the connection is good for nothing else
                self.router.backends.release(backend, reusable=self.backend_reusable)

    async def _connect(self, app: App, servers: list[Server], fresh: bool = False) -> BackendConnection | None:
        """A connection to the slot's server; on failure up to app.retries more attempts, each on
        the next server (redispatch) or the same one. Only connects are retried: nothing of the
        request has been sent yet."""
        timeout = self.config.timeouts.connect
        started = time.monotonic()
        tried: list[Server] = []
        for attempt in range(app.retries + 1):
            server = self.slot.server
            tried.append(server)
            try:
                greeting = backend_proxy.greeting(server, *self.conn.client, self.conn.address, self.conn.sni)
                conn = await self.router.backends.acquire(server, timeout, fresh=fresh, greeting=greeting)
                self.slot.refused_in_row = 0
                self.t_connect = (time.monotonic() - started) * 1000
                return conn
            except (OSError, TimeoutError) as e:
                reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
                log.warning("%s/%s: connect failed: %s", app.name, server.address, reason)
                self.router.connect_failed(app, self.slot, refused=isinstance(e, ConnectionRefusedError))
                self.router.stats.connect_error(app.name, str(server.address), e)
                self.termination = "sC" if isinstance(e, TimeoutError) else "SC"
            if attempt == app.retries:
                break
            self.retries += 1
            self.router.stats.retry(app.name)
            others = [s for s in servers if s not in tried and not self.router.is_down(app, s)]
            if app.redispatch and others:
                slot = self.router.claim_slot(app, others)
                if slot is None:
                    continue                  # every other server is full: the same one again
                self.router.release_slot(app, self.slot)
                self.slot = slot
        self.t_connect = (time.monotonic() - started) * 1000
        return None

    # ---- talking to the backend

    async def _exchange(self, backend: BackendConnection):
        """True/False: whether the client connection stays; _STALE: a reused backend connection
        turned out closed before anything happened on it."""
        head, conn, app = self.head, self.conn, self.app
        cfg = self.config
        backend.writer.write(forwarding.backend_request_head(
            head, client_ip=conn.client[0], scheme=conn.listener.scheme,
            client_trusted=conn.client_trusted(cfg),
            keep_alive=self.router.backends.keeps_alive and not head.is_websocket_upgrade,
            forwarded_for=cfg.forwarded_for, forwarded=cfg.forwarded, rules=app.request_headers,
            client_cert_line=client_cert_line(cfg, app, conn.sni, conn.client_cert_line, head.host)))
        if head.has_body:
            self.upload = asyncio.create_task(self._upload_body(backend))
        sent_at = time.monotonic()
        try:
            resp, rest = await self._response_head(backend)
        except HttpError as e:
            return await self._backend_error(502, e.reason, "SH")
        except TimeoutError:
            return await self._backend_error(504, "backend response timeout", "sH")
        except BackendFailed as e:
            if backend.reused and not head.has_body and not self.sent and e.silent:
                return _STALE
            return await self._backend_error(502, str(e), "SH")
        self.t_response = (time.monotonic() - sent_at) * 1000

        if resp.status == 101:
            return await self._tunnel(backend, resp, rest)
        # The request body may still be on its way (a streaming backend, an early error): whether
        # the connection stays is settled once it is in, so only what is known now says close.
        keep = head.keep_alive and resp.body != CLOSE and not self.router.stopping
        self.status = resp.status
        await self._send(forwarding.client_response_head(resp, keep_alive=keep, client_version=head.version,
                                                         rules=app.response_headers))
        try:
            await self._response_body(backend, resp, rest)
        except BackendFailed as e:
            self.note = f"response cut: {e}"
            self.termination = "SD"
            return False
        except ClientGone:
            self.termination = "CD"
            raise
        self.response_complete = True
        if self.upload is not None and not self.upload.done():
            await asyncio.wait({self.upload}, timeout=UPLOAD_FINISH_WAIT)
        upload_ok = self.upload is None or (self.upload.done() and not self.upload.cancelled()
                                            and self.upload.exception() is None)
        self.backend_reusable = resp.keep_alive and upload_ok and self.body_done and not self.surplus
        if not self.body_done:
            # Unread body bytes would be taken for the next request: close instead.
            self.note = self.note or "response before the end of the request body"
            await conn.linger()
            return False
        return keep and not self.router.stopping

    async def _backend_error(self, status: int, reason: str, termination: str = "SH") -> bool:
        """No response head from the backend: answer ourselves, unless the request upload failed
        first (then that failure is the story)."""
        upload_error = None
        if self.upload is not None and self.upload.done() and not self.upload.cancelled():
            upload_error = self.upload.exception()
        if isinstance(upload_error, HttpError):
            self.note = f"bad request body: {upload_error.reason}"
            await self._answer(upload_error.status, upload_error.reason, termination="PD")
            return False
        if isinstance(upload_error, ClientGone):
            self.status, self.note, self.termination = 499, "client went away during the request body", "CD"
            return False
        log.warning("%s: %s", self.route, reason)
        return await self._answer(status, reason, termination=termination)

    async def _read_backend(self, backend: BackendConnection) -> bytes:
        for _ in range(MAX_SERVER_WAITS):
            try:
                async with asyncio.timeout(self.config.timeouts.server):
                    return await backend.reader.read(READ_SIZE)
            except ConnectionError as e:
                raise BackendFailed(f"read failed: {e}") from None
            except TimeoutError:
                # While the client is still sending the body, its pace (timeouts.client) is what
                # the server waits for: that is not the server's inactivity.
                if self.upload is None or self.upload.done():
                    raise
        raise TimeoutError

    async def _response_head(self, backend: BackendConnection) -> tuple[ResponseHead, bytes]:
        """The final response head (or a 101); interim 1xx responses (100 Continue, 103 Early
        Hints) are passed to the client on the way."""
        data = b""
        received = False
        while True:
            parser = ResponseHeadParser(self.head.method)
            while (resp := parser.feed(data)) is None:
                try:
                    data = await self._read_backend(backend)
                except BackendFailed as e:     # a reset: the same race as a close, when silent
                    raise BackendFailed(str(e), silent=not received) from None
                if not data:
                    raise BackendFailed(_NO_RESPONSE, silent=not received)
                received = True
            data = parser.leftover
            if resp.informational and resp.status != 101:
                await self._send(forwarding.client_response_head(resp, keep_alive=True,
                                                                 client_version=self.head.version))
                continue
            return resp, data

    async def _send(self, data: bytes) -> None:
        await self.conn.send(data)
        self.sent += len(data)

    async def _response_body(self, backend: BackendConnection, resp: ResponseHead, rest: bytes) -> None:
        """Forward the body. Bytes after its end (`surplus`) mean the backend and the router
        disagree about where the response ended: that connection is not reused."""
        if resp.body == LENGTH:
            remaining = resp.content_length
            data = rest
            while True:
                if len(data) > remaining:
                    self.surplus, data = True, data[:remaining]
                if data:
                    remaining -= len(data)
                    await self._send(data)
                if remaining <= 0:
                    return
                data = await self._read_backend(backend)
                if not data:
                    raise BackendFailed(f"backend closed with {remaining} body bytes missing")
        elif resp.body == CHUNKED:
            decoder = ChunkedDecoder(error_status=502)
            data = rest
            while True:
                try:
                    _, used = decoder.feed(data)
                except HttpError as e:
                    raise BackendFailed(f"bad chunked body: {e.reason}") from None
                if used:
                    await self._send(data[:used])
                if decoder.done:
                    self.surplus = used < len(data)
                    return
                data = await self._read_backend(backend)
                if not data:
                    raise BackendFailed("backend closed in the middle of a chunked body")
        elif resp.body == NO_BODY:
            self.surplus = bool(rest)
        elif resp.body == CLOSE:
            data = rest
            while True:
                if data:
                    await self._send(data)
                data = await self._read_backend(backend)
                if not data:
                    return

    # ---- request body

    async def _upload_body(self, backend: BackendConnection) -> None:
        """Stream the request body to the backend; runs beside the response reader so that an
        early answer (or 100 Continue) gets through. On a client-side failure the backend
        connection is aborted, which wakes the response reader."""
        try:
            if self.head.chunked:
                await self._upload_chunked(backend)
            else:
                await self._upload_length(backend, self.head.content_length)
            self.body_done = True
        except (HttpError, ClientGone):
            backend.abort()
            raise
        except (ConnectionError, TimeoutError):
            # The backend stopped reading; its response (if any) is still worth waiting for.
            self.note = "backend did not take the whole request body"
            raise

    async def _client_data(self) -> bytes:
        if self.conn.buf:
            data, self.conn.buf = bytes(self.conn.buf), bytearray()
            return data
        try:
            async with asyncio.timeout(self.config.timeouts.client):
                data = await self.conn.reader.read(READ_SIZE)
        except (ConnectionError, TimeoutError) as e:
            raise ClientGone(str(e) or type(e).__name__) from None
        if not data:
            raise ClientGone("client closed in the middle of the request body")
        return data

    async def _to_backend(self, backend: BackendConnection, data: bytes) -> None:
        self.body_in += len(data)
        backend.writer.write(data)
        async with asyncio.timeout(self.config.timeouts.server):
            await backend.writer.drain()

    async def _upload_length(self, backend: BackendConnection, remaining: int) -> None:
        while remaining > 0:
            data = await self._client_data()
            if len(data) > remaining:           # a pipelined request follows the body
                self.conn.buf = bytearray(data[remaining:])
                data = data[:remaining]
            remaining -= len(data)
            await self._to_backend(backend, data)

    async def _upload_chunked(self, backend: BackendConnection) -> None:
        decoder = ChunkedDecoder(error_status=400)
        body = TrailerFilter(decoder, forwarding.owned_fields(self.app.request_headers))
        limit = self.app.max_body
        while not body.done:
            data = await self._client_data()
            out, used = body.feed(data)
            if limit and decoder.body_bytes > limit:
                raise HttpError(413, f"the body is larger than {limit} bytes")
            if used < len(data):
                self.conn.buf = bytearray(data[used:])
            await self._to_backend(backend, out)

    # ---- WebSocket

    async def _tunnel(self, backend: BackendConnection, resp: ResponseHead, rest: bytes) -> bool:
        """After a 101 to a WebSocket upgrade: bytes both ways until both sides are done (or one
        is and the other lingers), or nothing moved for timeouts.tunnel."""
        self.status = resp.status
        if not self.head.is_websocket_upgrade:
            return await self._backend_error(502, "backend switched protocols without an upgrade request")
        if self.upload is not None:
            with contextlib.suppress(Exception):
                await self.upload
            if not self.body_done:
                return False
        await self._send(forwarding.client_response_head(resp, keep_alive=False, client_version=self.head.version))
        conn = self.conn
        # What went through here, for the tunnel keepalive's frame count (ws_keepalive).
        self.tunnel_prelude = (bytes(conn.buf), rest)
        if rest:
            await self._send(rest)
        if conn.buf:
            backend.writer.write(bytes(conn.buf))
            conn.buf.clear()
        # From here bytes move by callbacks (fastpath.Tunnel, started by the client connection's
        # protocol when serve_one returns): no task or coroutine is held per tunnel.
        self.tunnel_backend = backend
        return False

    def hand_over_tunnel(self) -> asyncio.Transport:
        """The backend's transport, for fastpath.Tunnel, which drives it from here and aborts it at
        the end. A tunnel can be held for hours, thousands at once, so the exchange lets go of what
        it no longer needs: the backend connection's stream objects, and all of the request head
        but its request line (for the log line)."""
        backend, self.tunnel_backend = self.tunnel_backend, None
        self.head = self.head._replace(raw=b"", host=None, host_as_sent=None, path="", origin_target="",
                                       connection_tokens=NO_TOKENS)
        return backend.writer.transport

    def tunnel_ended(self, note: str, to_client: int, from_client: int) -> None:
        """What the exchange's coroutine would have done at the end of a tunnel it had driven."""
        backend = self.tunnel_backend
        if backend is not None:         # the client left before the tunnel started
            backend.abort()
            self.router.backends.release(backend)
        self.router.release_slot(self.app, self.slot)
        self.sent += to_client
        self.body_in += from_client
        self.note = self.note or note
        self.log()

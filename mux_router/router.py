"""The mux-router daemon: listeners (following reloads), client connections (client.py), the
health state it follows, graceful shutdown. Protocol decisions live in the pure modules (http1,
routing, balancer, forwarding) and the exchange machine (exchange.py); backends.py connects."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from frontgate.config import Address, ConfigError, Listener, RouterConfig, load_router_config
from frontgate.health_state import StateFollower
from frontgate.process_status import ProcessStatus
from frontgate.restart_keys import admin_changes, refuse_restart_changes
from frontgate.sockets import inherited_unix_listener, remove_stale_socket
from frontgate.sweep import Sweep, interval_for
from mux_router import access_log
from mux_router.backends import BackendPool
from mux_router.client import ClientProtocol
from mux_router.live_routes import LiveRoutes
from mux_router.servers import ServerSlots
from mux_router.stats import RouterAdmin, RouterStats
from mux_router.tunnel import HALF_CLOSED_GRACE

log = logging.getLogger("mux-router")

STATE_REFRESH_INTERVAL = 0.5   # how often the health state file is stat'ed


class Router(ServerSlots):
    def __init__(self, config: RouterConfig, status: ProcessStatus | None = None):
        self.status = status or ProcessStatus(None, "mux-router", config.path)   # reload outcomes
        self.routes = LiveRoutes(config, self.status)     # dynamic routes: served after the static apps
        config = self.routes.merge(config)
        self.config = config
        self.health = StateFollower(config.state_file, config.state_stale_after)
        self.slots, self.balancers, self.queues = {}, {}, {}
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
            return ClientProtocol(self, self.listeners.get(address, listener))

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
                conn.drain()            # HTTP/2: GOAWAY, no new stream
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

def listener_settings(listener: Listener) -> str:
    """A listener's settings for the log: its name, scheme and what it requires."""
    text = f"{listener.name}, {listener.scheme}"
    if listener.proxy_protocol:
        text += ", PROXY v2 required" + ("" if listener.sni_host_check else ", no SNI host check")
    return text


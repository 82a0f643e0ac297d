"""tls-terminator, the daemon: bind (then drop privileges), accept at most max_connections, give
each connection its turn at the handshake, reload the configuration and the certificates on SIGHUP
and by polling the files, drain on SIGTERM, report on the admin listener."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket

from OpenSSL import SSL

from frontgate import names
from frontgate.config import (
    ConfigError,
    PassthroughRoute,
    TerminatorConfig,
    load_terminator_config,
)
from frontgate.memory import release_free_memory
from frontgate.process_status import ProcessStatus
from frontgate.restart_keys import admin_changes, refuse_restart_changes
from frontgate.sockets import open_listener
from frontgate.sweep import Sweep, interval_for
from tls_terminator.certificate_files import files_fingerprint
from tls_terminator.certs import CertStore
from tls_terminator.connection import ClientConnection
from tls_terminator.hello_turns import HelloTurns
from tls_terminator.passthrough import PassthroughConnection
from tls_terminator.privileges import PrivilegeError, drop_privileges
from tls_terminator.stats import TerminatorAdmin, TerminatorStats
from tls_terminator.tls import Front
from tls_terminator.upstream import RateLimitedWarning

log = logging.getLogger("tls-terminator")

DRAIN_RECHECK = 0.5        # ... and the open ones are looked at again this often, until the grace ends
ACCEPT_BATCH = 64          # accepted per wake-up: a burst of new clients cannot starve open connections
TRIM_INTERVAL = 5.0        # at most this often, free pages go back to the system (frontgate.memory)


class Terminator:
    def __init__(self, cfg: TerminatorConfig, store: CertStore, status: ProcessStatus | None = None):
        self.cfg = cfg
        self.store = store
        self.status = status or ProcessStatus(None, "tls-terminator", cfg.path)   # reload outcomes
        # The front context outlives certificate reloads (sessions keep resuming); see tls.Front.
        self.front = Front(cfg.tls, self._on_server_name, cfg.path)
        self.passthrough_routes: names.NameIndex[PassthroughRoute | None] = _passthrough_index(cfg)
        self.fingerprint = files_fingerprint(cfg)
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection | PassthroughConnection] = set()
        self.listener: socket.socket | None = None
        self.accepting = False
        self.stopping = False
        self.drained = asyncio.Event()
        self.router_unreachable = RateLimitedWarning()
        self.accept_trouble = RateLimitedWarning()
        self.at_limit = RateLimitedWarning(60.0)
        self.tasks: set[asyncio.Task] = set()
        self.poll_task: asyncio.Task | None = None
        self.stats = TerminatorStats()
        self.hello_turns = HelloTurns(self.loop)
        self.idle_sweep = Sweep(self.loop, interval_for(cfg.idle_timeout))     # established connections
        self.trim_handle: asyncio.TimerHandle | None = None
        self.last_trim = 0.0
        self.admin = TerminatorAdmin(self)          # [admin]: /metrics, /stats (inert without it)
        self.admin_sock: socket.socket | None = None

    def large_buffers_freed(self) -> None:
        """A quiet connection gave back the large buffers of a transfer: the free pages go back to
        the system soon, once for all that did so within TRIM_INTERVAL."""
        if self.trim_handle is None:
            delay = max(0.0, self.last_trim + TRIM_INTERVAL - self.loop.time())
            self.trim_handle = self.loop.call_later(delay, self._trim)

    def _trim(self) -> None:
        self.trim_handle = None
        self.last_trim = self.loop.time()
        release_free_memory()

    # ---- accepting

    def start(self) -> None:
        self.listener = open_listener(self.cfg.listen)
        if self.cfg.admin is not None:
            # Bound before the privileges go, like the listener; the stats directory is made now too.
            try:
                self.admin_sock = open_listener(self.cfg.admin.address)
            except OSError as e:
                raise OSError(e.errno, f"admin listener {self.cfg.admin.address}: {e.strerror or e}") from None
            self.admin.prepare()
        # Bound to the port (as root if it is 443): now drop to the configured user, before any
        # client byte is read.
        for line in drop_privileges(self.cfg.user, self.cfg.group, self.cfg.chroot):
            log.warning("%s", line)
        self._resume_accepting()
        if self.cfg.certs_poll_interval > 0:
            self.poll_task = self.loop.create_task(self._poll_certificates())

    def passthrough_route(self, server_name: str | None) -> PassthroughRoute | None:
        try:
            return self.passthrough_routes.lookup(names.sni_name(server_name))
        except names.BadName:
            return None         # not a name: OpenSSL's side refuses the handshake

    def _on_server_name(self, conn: SSL.Connection) -> None:
        # Whatever store is current when the ClientHello arrives: a reload changes what new
        # handshakes get, never an established connection.
        try:
            self.store.on_server_name(conn)
        except names.BadName as e:
            # Not a host name ("a.b..", control bytes, non-ASCII): no certificate, so the handshake
            # fails, and no stage ever judges a name the other would read differently.
            log.info("handshake refused: %s", e)
        except Exception:
            # Never an exception out of OpenSSL's callback: this client's handshake fails (the
            # front context has no certificate), the daemon goes on.
            log.exception("choosing the certificate for %r failed", conn.get_servername())

    def replace_connection(self, old: ClientConnection, new: PassthroughConnection) -> None:
        self.stats.connection_done(old)      # the ClientHello bytes it read
        self.connections.discard(old)
        self.connections.add(new)

    def _resume_accepting(self) -> None:
        if self.accepting or self.stopping or self.listener is None:
            return
        self.loop.add_reader(self.listener.fileno(), self._accept)
        self.accepting = True

    def _pause_accepting(self) -> None:
        if self.accepting and self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
        self.accepting = False

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self.connections) >= self.cfg.max_connections:
                self.at_limit(f"max_connections ({self.cfg.max_connections}) reached: "
                              "not accepting until a connection ends")
                self.stats.at_limit += 1
                self._pause_accepting()
                return
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue      # the client gave up while in the backlog
                # Out of file descriptors or memory: the listener stays readable, so waiting is
                # the only way not to spin.
                self.accept_trouble(f"accept failed: {e.strerror}; pausing for a second")
                self._pause_accepting()
                self.loop.call_later(1.0, self._resume_accepting)
                return
            # No TCP_NODELAY here: the event loop sets it on every TCP transport it makes
            # (tests/unit/test_event_loop.py holds it to that).
            conn = ClientConnection(self)
            self.connections.add(conn)
            self.stats.connections += 1
            task = self.loop.create_task(self._attach(sock, conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _attach(self, sock: socket.socket, conn: ClientConnection) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock)
        except OSError as e:
            log.debug("could not set up an accepted connection: %s", e)
            sock.close()
            self.connection_ended(conn)

    def connection_ended(self, conn: ClientConnection | PassthroughConnection) -> None:
        if conn in self.connections:       # once per connection
            self.stats.connection_done(conn)
        self.connections.discard(conn)
        if self.stopping:
            if not self.connections:
                self.drained.set()
        elif not self.accepting and len(self.connections) < self.cfg.max_connections:
            self._resume_accepting()

    # ---- signals

    def reload(self) -> None:
        """SIGHUP: re-read the config and the certificates. A config that does not load, or that
        changes what only a restart can (frontgate/restart_keys.py), is refused whole; a
        certificate file that does not load is reported and skipped (its previous version stays
        in service)."""
        config_fingerprint = self.status.config_on_disk()
        try:
            cfg = load_terminator_config(self.cfg.path)
            # Bound (and the privileges dropped) once, at start; forward_to is read per connection.
            refuse_restart_changes(cfg.path, [(f"terminator.{key}", getattr(self.cfg, key), getattr(cfg, key))
                                              for key in ("listen", "user", "group", "chroot")]
                                   + admin_changes(self.cfg.admin, cfg.admin))
            fingerprint = files_fingerprint(cfg)
            store = CertStore.load(cfg, previous=self.store, strict=False)
            front = self.front if cfg.tls == self.cfg.tls else Front(cfg.tls, self._on_server_name, cfg.path)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            self.status.reloaded(error=f"keeping the running configuration: {e}")
            return
        if front is not self.front:
            log.info("[tls] changed: new sessions only (resumption of older ones ends)")
        self.cfg, self.store, self.front, self.fingerprint = cfg, store, front, fingerprint
        self.admin.admin = cfg.admin            # `refresh`; the rest is refused above unless unchanged
        self.idle_sweep.interval = interval_for(cfg.idle_timeout)
        self.passthrough_routes = _passthrough_index(cfg)
        self.report(store, f"reloaded {cfg.path}: {store.describe()}, forwarding to {cfg.forward_to}")
        self.status.reloaded(config_fingerprint)
        if not self.accepting and len(self.connections) < cfg.max_connections:
            self._resume_accepting()
        if self.poll_task is None and cfg.certs_poll_interval > 0 and not self.stopping:
            self.poll_task = self.loop.create_task(self._poll_certificates())

    def reload_certificates(self) -> None:
        """The poll saw a certificate file change: rebuild the store with the running config."""
        fingerprint = files_fingerprint(self.cfg)
        try:
            store = CertStore.load(self.cfg, previous=self.store, strict=False)
        except ConfigError as e:
            log.error("certificate reload failed, keeping the loaded certificates: %s", e)
            self.fingerprint = fingerprint     # do not retry until something changes again
            return
        self.store, self.fingerprint = store, fingerprint
        self.report(store, f"certificate files changed, reloaded: {store.describe()}")
        self.status.changed(self.status.config_on_disk(), "certificates")

    def report(self, store: CertStore, message: str) -> None:
        log.info("%s", message)
        for line in store.problems:
            log.error("certificate problem: %s", line)
        for line in store.warnings():
            log.warning("%s", line)

    async def _poll_certificates(self) -> None:
        try:
            while not self.stopping and self.cfg.certs_poll_interval > 0:
                await asyncio.sleep(self.cfg.certs_poll_interval)
                if not self.stopping and files_fingerprint(self.cfg) != self.fingerprint:
                    self.reload_certificates()
        finally:
            self.poll_task = None

    async def stop(self) -> None:
        """SIGTERM: stop accepting, close idle connections as they become idle, give busy ones
        terminator.grace to finish, drop the rest."""
        self.stopping = True
        if self.poll_task is not None:
            self.poll_task.cancel()
            self.poll_task = None
        self._pause_accepting()
        if self.listener is not None:
            self.listener.close()
            if self.cfg.listen.is_unix:
                try:
                    os.unlink(self.cfg.listen.path)
                except OSError:
                    pass
        # Every connection gets the drain, those still in their handshake too: a client may have
        # finished its side and sent its request while its Finished waits unread here.
        grace = self.cfg.grace
        if self.connections:
            log.info("stopping: waiting up to %gs for %d open connections", grace, len(self.connections))
            deadline = self.loop.time() + grace
            # Idle keep-alive clients would otherwise hold the process for the whole grace.
            while self.connections and (left := deadline - self.loop.time()) > 0:
                now = self.loop.time()
                for conn in list(self.connections):
                    conn.close_if_idle(now)
                try:
                    await asyncio.wait_for(self.drained.wait(), min(DRAIN_RECHECK, left))
                except asyncio.TimeoutError:
                    pass
            if self.connections:
                log.warning("stopping: closing %d connections still open after %gs", len(self.connections), grace)
                for conn in list(self.connections):
                    conn.close(abort=True)
        log.info("stopped")


async def serve(cfg: TerminatorConfig, store: CertStore, status: ProcessStatus | None = None,
                fingerprint: str = "") -> None:
    terminator = Terminator(cfg, store, status)
    try:
        terminator.start()
    except PrivilegeError as e:
        log.error("%s", e)
        raise SystemExit(1) from None
    except OSError as e:
        log.error("cannot listen on %s: %s", cfg.listen, e.strerror or e)
        raise SystemExit(1) from None
    loop = terminator.loop
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, terminator.reload)
    await terminator.admin.start(terminator.admin_sock)
    terminator.report(store, f"listening on {cfg.listen}, forwarding to {cfg.forward_to}; {store.describe()}")
    terminator.status.started(fingerprint)
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    await terminator.stop()
    await terminator.admin.stop()
    terminator.status.stopped()


def _passthrough_index(cfg: TerminatorConfig) -> names.NameIndex[PassthroughRoute | None]:
    return names.build_index(((route.sni, route) for route in cfg.passthrough), None)

"""tls-terminator's I/O: accept TLS, hand the plaintext to the router behind a PROXY v2 header.

One asyncio.Protocol per client connection, with pyOpenSSL in memory-BIO mode: the transport's
bytes go into OpenSSL with one `bio_write`, the plaintext comes out with one `recv` per record
while OpenSSL holds any, and whatever OpenSSL has to send (handshake, records, alerts) leaves with
one exact-size `bio_read` and one `transport.write` per flush. The memory BIOs are sized before
each call (tls.may_have_plaintext, tls.drain_output), so the relay never pays for a WantReadError
in the common case: the cost per chunk is a few large calls, not one per record.

A connection's life: handshake (bounded by handshake_timeout; the SNI callback picks the
certificate), with the connection to forward_to opened alongside it from the first ClientHello
bytes (the router sees nothing on it until the handshake ends; a failed handshake closes it
unused) -> the PROXY header and the first plaintext -> relay both ways with
backpressure -> half-close: the client's close_notify or EOF becomes an EOF to the router; the
router's EOF becomes a close_notify to the client, and then the connection is closed. An
established connection with no traffic either way for idle_timeout is closed (found by one sweep
over all of them, frontgate.sweep, not a timer each: idle connections should cost little).

At max_connections the listener stops accepting: new clients wait in the kernel's listen backlog
(and are refused by the kernel once that is full) until a connection ends. Nothing is accepted
only to be dropped.

With [[passthrough]] routes, a connection first reads the raw ClientHello (tls_terminator.clienthello)
and, when its SNI matches a route, becomes a PassthroughConnection that relays the bytes untouched
to the route's backend. Certificates are chosen by the store's SNI callback on the front context
(tls_terminator.tls): SIGHUP and the certificate file poll replace the store, not the front, so
open connections and session resumption carry on. Privileges are dropped right after binding.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import socket
import stat
import time
from collections import deque

from OpenSSL import SSL

from frontgate import names, proxy_protocol
from frontgate.config import Address, ConfigError, PassthroughRoute, TerminatorConfig, load_terminator_config
from frontgate.memory import release_free_memory
from frontgate.restart_keys import admin_changes, refuse_restart_changes
from frontgate.process_status import ProcessStatus
from frontgate.sweep import Sweep, interval_for
from tls_terminator.certs import CertStore, client_cert_subject, files_fingerprint
from tls_terminator.clienthello import MAX_HELLO, NotAClientHello, read_sni
from tls_terminator.privileges import PrivilegeError, drop_privileges
from tls_terminator.stats import TerminatorAdmin, TerminatorStats, handshake_failure_reason
from tls_terminator.tls import Front, drain_output, may_have_plaintext, renew_bios

log = logging.getLogger("tls-terminator")

RECV_SIZE = 65536          # per SSL_read; a record holds at most 16 KiB, so one read never truncates
CONNECT_TIMEOUT = 5.0      # the router is local: if it does not answer by then, it is not there
DRAIN_QUIET = 1.0          # SIGTERM: a connection this long without traffic may be closed ...
DRAIN_RECHECK = 0.5        # ... and the open ones are looked at again this often, until the grace ends
ACCEPT_BATCH = 64          # accepted per wake-up: a burst of new clients cannot starve open connections
HELLOS_PER_PASS = 2        # ClientHellos answered per event-loop pass (see HelloTurns)
BACKLOG = 1024             # the kernel's queue of unaccepted clients (where they wait at max_connections)
# A memory BIO keeps the largest buffer it has needed: after a chunk bigger than this (a download
# comes in reads of up to 256 KiB) the connection gets new BIOs once it has been quiet a while.
BIO_KEEP = 16 * 1024
BIO_QUIET = 1.0
TRIM_INTERVAL = 5.0        # at most this often, free pages go back to the system (frontgate.memory)


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


# --------------------------------------------------------------------------- per connection

class HelloTurns:
    """At most HELLOS_PER_PASS ClientHellos are answered per pass of the event loop; the others
    wait their turn, first come first served.

    Answering a ClientHello is the expensive step of a handshake (key exchange and signature, about
    half a millisecond here), and one loop pass runs every callback that is ready. Without a limit,
    a burst of 50 new clients becomes one 25 ms pass, and every connection that is further along
    (a client's Finished, the request behind it, the router's answer) waits behind all 50, so the
    burst's first requests reach the router only after its last handshake. With the limit, passes
    stay short and those finish first; the CPU spent is the same."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_pass: int = HELLOS_PER_PASS):
        self.loop = loop
        self.per_pass = per_pass
        self.waiting: deque[ClientConnection] = deque()
        self.used = 0               # turns taken in this pass
        self.scheduled = False      # a _next_pass is due

    def take(self, conn: "ClientConnection") -> bool:
        """True: answer now. False: `conn` is queued, and its take_turn() is called later."""
        self._schedule()
        if self.used < self.per_pass and not self.waiting:
            self.used += 1
            return True
        self.waiting.append(conn)
        return False

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._next_pass)

    def _next_pass(self) -> None:
        self.scheduled = False
        self.used = 0
        while self.waiting and self.used < self.per_pass:
            conn = self.waiting.popleft()
            if not conn.closed:
                self.used += 1
                conn.take_turn()
        if self.waiting or self.used:
            self._schedule()


NOT_PAUSED: frozenset[str] = frozenset()


class ClientSide(asyncio.Protocol):
    """What a client connection does the same whether it is decrypted here (ClientConnection) or
    passed through (PassthroughConnection): backpressure both ways, pausing its reads for several
    reasons at once, ending with its upstream. Subclasses set the attributes used here."""

    terminator: "Terminator"
    transport: asyncio.Transport | None
    upstream: "RouterSide | None"
    connect_task: asyncio.Task | None
    timer: asyncio.TimerHandle | None = None     # the handshake's (idle deadlines are swept: sweep())
    idle_timeout: float
    last_activity: float
    paused_for: frozenset[str] = NOT_PAUSED     # why the client's reading is paused
    client_done: bool
    closed: bool
    bytes_in = 0        # from / to the client, for the stats (added to the totals when it ends)
    bytes_out = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end_deadlines()
        if self.connect_task is not None:
            self.connect_task.cancel()
        if self.upstream is not None:
            # Nobody is left to read the upstream's answer.
            self.upstream.close(abort=exc is not None)
        self.terminator.connection_ended(self)

    def pause_writing(self) -> None:
        # The client reads slower than the upstream sends: stop reading from the upstream.
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def pause_client_reading(self, reason: str) -> None:
        if not self.paused_for and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused_for = self.paused_for | {reason}

    def resume_client_reading(self, reason: str) -> None:
        # Pauses are rare and short; a connection not paused shares one empty frozenset.
        self.paused_for = (self.paused_for - {reason}) or NOT_PAUSED
        if (not self.paused_for and not self.client_done and self.transport is not None
                and not self.transport.is_closing()):
            self.transport.resume_reading()

    def _end_deadlines(self) -> None:
        """No more handshake timer, and out of the idle sweep."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.terminator.idle_sweep.discard(self)

    # ---- the idle deadline, checked by the terminator's idle sweep (frontgate.sweep)

    def sweep(self, now: float) -> bool:
        if self.closed:
            return False
        if now - self.last_activity < self.idle_timeout:
            return True
        self.close_idle()
        return False

    def close_idle(self) -> None:
        """No traffic either way for idle_timeout."""
        self.close()

    def close(self, abort: bool = False) -> None:
        """Close both sides; a plain close still delivers what is queued for the client."""
        if self.closed:
            return
        self.closed = True
        self._end_deadlines()
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        if self.upstream is not None:
            self.upstream.close(abort=abort)


class ClientConnection(ClientSide):
    """The client's TLS connection, and the owner of its plaintext connection to the router."""

    def __init__(self, terminator: "Terminator"):
        self.terminator = terminator
        self.loop = terminator.loop
        # Snapshots: a reload (SIGHUP) changes what new connections get, never an open one.
        self.cfg = terminator.cfg
        self.tls = SSL.Connection(terminator.front.context, None)
        self.tls.set_accept_state()
        self.transport: asyncio.Transport | None = None
        self.upstream: RouterSide | None = None
        self.early: bytearray | None = bytearray()   # plaintext that arrives before the router connection
        self.established = False                     # handshake done
        self.handshake_bios = True                   # the memory BIOs the handshake grew: renew_bios
        self.bios_grown = False                      # a chunk > BIO_KEEP went through them
        self.client_done = False                     # close_notify or EOF from the client
        self.closed = False
        self.last_activity = 0.0
        self.awaiting_router = False                 # plaintext went to the router, none came back since
        self.connect_task: asyncio.Task | None = None
        self.preconnected = False                    # the early router connect has been started
        self.hello_wait: bytearray | None = None     # bytes held while waiting for a HelloTurns turn
        # With [[passthrough]] routes, the ClientHello is read raw first to choose between
        # terminating here and relaying it untouched.
        self.sniffed: bytearray | None = bytearray() if self.cfg.passthrough else None

    # ---- asyncio callbacks (client side)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:      # closed (a SIGTERM drain ended) between accept() and here
            transport.abort()
            return
        self.last_activity = self.loop.time()
        self.timer = self.loop.call_later(self.cfg.handshake_timeout, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.client_done:
            return
        self.last_activity = self.loop.time()
        self.bytes_in += len(data)
        if self.sniffed is not None:
            data = self._sniff(data)
            if not data:
                return
        if self.hello_wait is not None:      # waiting for its turn (HelloTurns)
            self.hello_wait += data
            return
        if not self.preconnected:
            # The first ClientHello bytes: open the router connection now, while the handshake runs,
            # so the first request goes on the moment the handshake ends instead of after a
            # connect. The PROXY header (which needs the handshake's results) waits until then.
            self.preconnected = True
            self._start_connect()
            if not self.terminator.hello_turns.take(self):
                self.hello_wait = bytearray(data)
                self.pause_client_reading("hello turn")     # holds what it has, no more
                return
        self._from_client(data)

    def take_turn(self) -> None:
        data, self.hello_wait = self.hello_wait, None
        self.resume_client_reading("hello turn")
        self._from_client(bytes(data))

    def _from_client(self, data: bytes) -> None:
        if len(data) > BIO_KEEP:
            self.bios_grown = True
        try:
            self.tls.bio_write(data)
            if not self.established and not self._advance_handshake():
                return
            self._decrypt()
        except SSL.Error as e:
            self._tls_failed(e)

    def eof_received(self) -> bool:
        if not self.established:
            self.terminator.stats.handshake_failed("closed")
            self.close(abort=True)
            return False
        # No close_notify (a truncation, which we cannot tell from a lazy client): the client is
        # done sending either way. Keep our side open, the router's answer may still be coming.
        self._client_finished()
        return True

    # ---- SNI passthrough

    def _sniff(self, data: bytes) -> bytes:
        """Collect the ClientHello; b"" while it is incomplete. Then either hand the connection to a
        passthrough route (b"") or return everything collected, for OpenSSL."""
        buf = self.sniffed
        buf += data
        # Parse only once the first record is complete (a trickling client costs no re-parsing).
        if len(buf) >= 5 and buf[0] == 22 and len(buf) < 5 + int.from_bytes(buf[3:5], "big"):
            return b""
        try:
            hello = read_sni(buf)
        except NotAClientHello:
            hello = None     # not for us to judge: OpenSSL answers it with an alert
        else:
            if hello is None and len(buf) <= MAX_HELLO + 1024:
                return b""
        self.sniffed = None
        route = self.terminator.passthrough_route(hello.server_name) if hello else None
        if route is None:
            return bytes(buf)
        self._end_deadlines()
        self.closed = True          # this object is done; the passthrough takes the transport
        self.terminator.stats.passthrough += 1
        relay = PassthroughConnection(self.terminator, self.transport, route, names.sni_name(hello.server_name),
                                      bytes(buf))
        self.transport.set_protocol(relay)
        self.terminator.replace_connection(self, relay)
        relay.start()
        return b""

    # ---- TLS

    def _advance_handshake(self) -> bool:
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return False
        self.established = True
        self.terminator.stats.handshake_ok(self.tls.get_protocol_version_name())
        self._flush()
        self._end_deadlines()
        self.terminator.idle_sweep.add(self)
        if self.upstream is not None:
            self._send_proxy_header()
            return True
        # Nothing more from the client until the router can take it; what was already decrypted
        # waits in `early` (at most one read's worth).
        self.pause_client_reading("connecting")
        if self.connect_task is None:       # the early connect failed or the router dropped it
            self._start_connect()
        return True

    def _decrypt(self) -> None:
        tls = self.tls
        chunks = []
        close_notify = False
        # One recv per record; stop when OpenSSL holds nothing more rather than on a WantReadError.
        while may_have_plaintext(tls):
            try:
                chunks.append(tls.recv(RECV_SIZE))
            except SSL.WantReadError:
                break       # the rest of a record comes with the next data_received
            except SSL.ZeroReturnError:
                close_notify = True
                break
        self._flush()     # e.g. a KeyUpdate answer (usually nothing: no call into OpenSSL then)
        if self.handshake_bios and self.established and renew_bios(tls):
            self.handshake_bios = False     # once per connection: the handshake's buffers go
        if chunks:
            self._to_router(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if close_notify:
            self._client_finished()

    def _flush(self) -> None:
        """Send what OpenSSL has queued for the client, in one write."""
        out = drain_output(self.tls)
        if out and self.transport is not None:
            self.bytes_out += len(out)
            self.transport.write(out)
            if len(out) > BIO_KEEP:
                self.bios_grown = True

    def _tls_failed(self, e: SSL.Error) -> None:
        # A client that cannot or will not speak our TLS (old versions, no common cipher, garbage):
        # not an operator's concern, one client's problem.
        log.debug("TLS error with %s: %s", self._peer(), e)
        if not self.established:
            self.terminator.stats.handshake_failed(handshake_failure_reason(e))
        if self.upstream is not None:
            # The client's stream is broken mid-way: the router must not take it for a clean end.
            self.upstream.close(abort=True)
        try:
            self._flush()      # the alert, so the client knows why
        except SSL.Error:
            pass
        self.close()

    # ---- the router side

    def _start_connect(self) -> None:
        self.connect_task = self.loop.create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        target = self.cfg.forward_to
        try:
            reason = await connect_upstream(self.loop, target, self)
            if reason is not None and self.established:
                # (An early connect that fails is tried again when the handshake ends, and only
                # that one is reported: a client that never finishes its handshake needs no router.)
                self.terminator.router_unreachable(f"cannot reach the router at {target}: {reason}; "
                                                   "closing the client connection")
                self._close_with_notify()
        finally:
            self.connect_task = None

    def upstream_connected(self, upstream: "RouterSide") -> None:
        if self.closed:
            upstream.close()
            return
        self.upstream = upstream
        if self.established:
            self._send_proxy_header()

    def _send_proxy_header(self) -> None:
        """The handshake is done and the router connected: the PROXY header, then what the client
        sent meanwhile. Until this has happened, `early` is not None."""
        header = proxy_protocol.encode(self._proxy_header())
        early, self.early = self.early or b"", None
        self.upstream.write(header + early)
        if self.client_done:
            self.upstream.write_eof()
        self.resume_client_reading("connecting")

    def _drop_early_upstream(self) -> None:
        """The router spoke or hung up before the handshake ended (its own request timeout): that
        connection is of no use. Detached, so its last events reach nobody; the end of the
        handshake connects again."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.client = DETACHED
            upstream.close(abort=True)

    def _to_router(self, data: bytes) -> None:
        self.awaiting_router = True
        if self.early is not None:           # the PROXY header has not gone yet
            self.early += data
        elif self.upstream is not None:
            self.upstream.write(data)

    def _client_finished(self) -> None:
        if self.client_done:
            return
        self.client_done = True
        if self.upstream is not None and self.early is None:
            self.upstream.write_eof()
        # else: _send_proxy_header sends the EOF after the early data.

    def to_client(self, data: bytes) -> None:
        """Plaintext from the router."""
        if self.closed:
            return
        if not self.established:
            self._drop_early_upstream()
            return
        self.last_activity = self.loop.time()
        self.awaiting_router = False
        try:
            # Into a memory BIO, without partial writes (tls.apply_policy), SSL_write takes
            # everything in one call; sendall only in case it ever does not.
            sent = self.tls.send(data)
            if sent < len(data):
                self.tls.sendall(memoryview(data)[sent:])
        except SSL.Error as e:
            self._tls_failed(e)
            return
        self._flush()

    def upstream_finished(self) -> None:
        """The router sent EOF: end the TLS stream properly, then close."""
        if not self.established:
            self._drop_early_upstream()
            return
        self._close_with_notify()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.closed or not self.established:
            return
        if exc is not None:
            # The router's stream broke off: no close_notify, so the client sees a truncation
            # rather than a clean end of a response that is not complete.
            log.debug("router connection for %s lost: %s", self._peer(), exc)
            self.close(abort=True)
        else:
            self._close_with_notify()

    # ---- timers and closing

    def _handshake_timed_out(self) -> None:
        self.timer = None
        log.debug("handshake timeout for %s", self._peer())
        self.terminator.stats.handshake_failed("timeout")
        self.close(abort=True)

    @property
    def idle_timeout(self) -> float:
        return self.cfg.idle_timeout

    def sweep(self, now: float) -> bool:
        # After a large transfer, once quiet: without this, a keep-alive client that downloaded a
        # file once would hold a BIO buffer of the largest read's size (about 270 KiB) while idle.
        if self.bios_grown and now - self.last_activity >= BIO_QUIET and not self.closed and renew_bios(self.tls):
            self.bios_grown = False
            self.terminator.large_buffers_freed()
        return super().sweep(now)

    def close_idle(self) -> None:
        log.debug("closing idle connection from %s", self._peer())
        self._close_with_notify()

    def _close_with_notify(self) -> None:
        if self.closed:
            return
        try:
            self.tls.shutdown()
            self._flush()
        except SSL.Error:
            pass
        self.close()

    def close_if_idle(self, now: float) -> None:
        """SIGTERM drain: close (with close_notify) a connection that looks like an idle keep-alive.
        HTTP is not visible here, so: quiet both ways for DRAIN_QUIET, and the router has answered
        the last bytes the client sent (a request still waiting for its answer is kept)."""
        if is_drain_idle(self.last_activity, self.awaiting_router, now):
            self._close_with_notify()

    # ---- the PROXY header

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a unix socket client"

    def _proxy_header(self) -> proxy_protocol.ProxyHeader:
        family, src, dst = client_addresses(self.transport.get_extra_info("peername"),
                                            self.transport.get_extra_info("sockname"))
        server_name = self.tls.get_servername()
        alpn = self.tls.get_alpn_proto_negotiated()
        return proxy_protocol.ProxyHeader(
            command="PROXY", family=family, src=src, dst=dst,
            authority=names.sni_name(server_name),       # valid: on_server_name refused anything else
            alpn=_ascii_or_none(alpn),
            tls_version=self.tls.get_protocol_version_name(),
            tls_cipher=self.tls.get_cipher_name(),
            client_cert_subject=client_cert_subject(self.tls) if self.cfg.client_auth else None,
        )


def _ascii_or_none(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def client_addresses(peer, sock) -> tuple[str, tuple[str, int] | None, tuple[str, int] | None]:
    """(family, src, dst) for the PROXY header from a transport's peername and sockname.
    IPv4 clients of a dual-stack [::] listener show up as ::ffff:a.b.c.d; they are sent as TCP4."""
    if not (isinstance(peer, tuple) and isinstance(sock, tuple)):
        return "UNSPEC", None, None          # unix socket listener: no client address to tell
    if ":" not in peer[0] and ":" not in sock[0]:
        return "TCP4", peer[:2], sock[:2]    # an IPv4 listener: the loop's dotted quads as they are
    src = ipaddress.ip_address(peer[0].split("%", 1)[0])
    dst = ipaddress.ip_address(sock[0].split("%", 1)[0])
    if src.version == 6 and src.ipv4_mapped and dst.version == 6 and dst.ipv4_mapped:
        src, dst = src.ipv4_mapped, dst.ipv4_mapped
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


def is_drain_idle(last_activity: float, awaiting_answer: bool, now: float) -> bool:
    """During a SIGTERM drain: may a connection be closed without cutting anything short?"""
    return not awaiting_answer and now - last_activity >= DRAIN_QUIET


# --------------------------------------------------------------------------- the daemon

def open_listener(address: Address) -> socket.socket:
    """A non-blocking listening socket. SO_REUSEPORT: several workers (supervisord numprocs) share
    the port, and a restarted worker binds while the others keep serving."""
    if address.is_unix:
        path = address.path
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)          # a stale socket from a previous run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = path
    else:
        family, _, _, _, target = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                                     flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(target)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


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

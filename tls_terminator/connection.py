"""A decrypted client connection of the terminator: TLS in memory BIOs, the plaintext to the router
behind a PROXY v2 header.

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
import logging
from typing import TYPE_CHECKING

from OpenSSL import SSL

from frontgate import names, proxy_protocol
from tls_terminator.certs import client_cert_subject
from tls_terminator.client_side import ClientSide, is_drain_idle
from tls_terminator.clienthello import MAX_HELLO, NotAClientHello, read_sni
from tls_terminator.passthrough import PassthroughConnection
from tls_terminator.stats import handshake_failure_reason
from tls_terminator.tls import drain_output, may_have_plaintext, renew_bios
from tls_terminator.upstream import (
    DETACHED,
    RouterSide,
    client_addresses,
    connect_upstream,
)

if TYPE_CHECKING:
    from tls_terminator.terminator import Terminator

log = logging.getLogger("tls-terminator")

RECV_SIZE = 65536          # per SSL_read; a record holds at most 16 KiB, so one read never truncates
# A memory BIO keeps the largest buffer it has needed: after a chunk bigger than this (a download
# comes in reads of up to 256 KiB) the connection gets new BIOs once it has been quiet a while.
BIO_KEEP = 16 * 1024
BIO_QUIET = 1.0


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
        the last bytes the client sent (a request still waiting for its answer is kept).

        An HTTP/2 connection is never closed here: a close races the client's next request, which
        it cannot tell from a lost one. It is half-closed toward the router at once instead (its
        client is done as far as the router is concerned): the router answers with a GOAWAY naming
        the last stream it took, finishes those and closes, and the client retries the rest on a
        new connection (RFC 9113 6.8)."""
        if self.established and self.tls.get_alpn_proto_negotiated() == b"h2":
            self._client_finished()
        elif is_drain_idle(self.last_activity, self.awaiting_router, now):
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

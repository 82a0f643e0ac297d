"""Who is on the other end of a client connection: the socket's address or the PROXY header's, the
SNI name and verified client certificate the terminator reported, whether the client is trusted,
and the current settings of the listener it came in on. Pure state, computed once per connection
(or once per config), asked for every request."""
from __future__ import annotations

from frontgate import proxy_protocol
from frontgate.addresses import parse_ip
from frontgate.config import App, Listener, RouterConfig
from mux_router import forwarding
from mux_router.http1_request import RequestHead
from mux_router.routing import ip_in, sni_host


class Peer:
    """`router` is anything with `config` and `listeners` (by address): the live router, or a
    test's stand-in."""

    __slots__ = ("router", "address", "_bound", "_listeners_seen", "_listener", "peer_ip", "client", "sni",
                 "sni_host", "client_cert_line", "_trusted_in", "_trusted")

    def __init__(self, router, listener: Listener, peername):
        self.router = router
        self.address = listener.address
        self._bound = listener          # as accepted; `listener` gives the current settings
        self._listeners_seen = None
        self._listener = listener
        self.peer_ip = parse_ip(peername[0]) if isinstance(peername, tuple) else None
        self.client = (str(self.peer_ip), peername[1]) if self.peer_ip is not None else ("unknown", 0)
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
            self._listener = listeners.get(self.address, self._bound)
        return self._listener

    def socket_trusted(self) -> bool:
        """The socket's peer may send a PROXY header. A unix socket's peers are local processes
        allowed in by the file's permissions."""
        return self.peer_ip is None or ip_in(self.peer_ip, self.router.config.trusted_sources)

    def client_trusted(self, config: RouterConfig) -> bool:
        """The client (as the PROXY header names it) is in trusted_sources: its forwarding
        headers are believed. Computed once per config."""
        if self._trusted_in is not config:
            self._trusted_in, self._trusted = config, ip_in(self.peer_ip, config.trusted_sources)
        return self._trusted

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

    def hash_key(self, app: App, head: RequestHead) -> bytes:
        """What the `source` and `uri` balancers hash."""
        if app.balance == "source":
            return self.peer_ip.packed if self.peer_ip is not None else b""
        if app.balance == "uri":
            return head.path.encode()
        return b""

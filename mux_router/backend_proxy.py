"""PROXY v2 headers the router sends to a server declared `send_proxy = true` (Varnish, another
frontgate, anything that reads the client's address from a PROXY header): one per new backend
connection, before the request. Pure: the server's I/O only writes what `greeting` returns.

A connection that starts with one client's header belongs to that client: such connections are
never pooled for others (the pool opens a fresh one and closes it after the exchange), as
HAProxy's connections with send-proxy are private to their client connection.
"""
from __future__ import annotations

from frontgate import proxy_protocol
from frontgate.addresses import parse_ip
from frontgate.config import Address, Server


def greeting(server: Server, client_ip: str, client_port: int, listener: Address, sni: str | None) -> bytes:
    """What a new connection to `server` starts with: nothing unless it is declared send_proxy;
    else the client's address (and the SNI it asked the terminator for) in a PROXY v2 header. The
    destination is the router listener's address when it is one of the client's family, else the
    unspecified address (a unix listener has none to give)."""
    if not server.send_proxy:
        return b""
    ip = parse_ip(client_ip)
    if ip is None:
        return proxy_protocol.LOCAL_HEADER     # a unix socket peer that sent no PROXY header: unknown
    family = "TCP4" if ip.version == 4 else "TCP6"
    dst_ip = parse_ip(listener.host) if not listener.is_unix and listener.host else None
    if dst_ip is None or dst_ip.version != ip.version or dst_ip.is_unspecified:
        dst = ("0.0.0.0" if ip.version == 4 else "::", 0)
    else:
        dst = (str(dst_ip), listener.port)
    return proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family=family, src=(str(ip), client_port), dst=dst, authority=sni))

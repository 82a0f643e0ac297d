"""Client addresses as the stages compare and report them."""
from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) as the IPv4
    address it is, so that IPv4 CIDRs match it and the PROXY header says TCP4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip(text: str) -> IPAddress | None:
    """A socket or PROXY header address (a zone index dropped) as an ip_address, unmapped; None for
    anything that is not an IP address (a unix socket peer)."""
    try:
        return unmapped(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


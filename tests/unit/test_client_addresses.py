"""The terminator's PROXY header addresses, from a transport's peername and sockname."""
from __future__ import annotations

import pytest

from tls_terminator.upstream import client_addresses


@pytest.mark.parametrize("peer,sock,expected", [
    (("192.0.2.7", 51000), ("127.0.0.1", 443), ("TCP4", ("192.0.2.7", 51000), ("127.0.0.1", 443))),
    # An IPv4 client of a dual-stack [::] listener: sent as what it is, TCP4.
    (("::ffff:192.0.2.7", 51000, 0, 0), ("::ffff:127.0.0.1", 443, 0, 0),
     ("TCP4", ("192.0.2.7", 51000), ("127.0.0.1", 443))),
    (("2001:db8::7", 51000, 0, 0), ("::1", 443, 0, 0), ("TCP6", ("2001:db8::7", 51000), ("::1", 443))),
    (("fe80::7%eth0", 51000, 0, 2), ("fe80::1%eth0", 443, 0, 2), ("TCP6", ("fe80::7", 51000), ("fe80::1", 443))),
    ("", "/run/frontgate/terminator.sock", ("UNSPEC", None, None)),
])
def test_client_addresses(peer, sock, expected):
    assert client_addresses(peer, sock) == expected

"""mux_router.peer.Peer: what a connection knows of its listener across reloads."""
from __future__ import annotations

from types import SimpleNamespace

from frontgate.config import Address, Listener
from mux_router.peer import Peer


def test_a_connection_follows_reloads_of_its_listener():
    address = Address.parse("127.0.0.1:8080")
    bound = Listener("public", address)
    router = SimpleNamespace(listeners={address: bound})
    conn = Peer(router, bound, ("127.0.0.1", 40000))
    assert conn.listener is bound
    # A reload replaces the router's listeners: the open connection's next request sees the new ones.
    renamed = Listener("outside", address, scheme="https")
    router.listeners = {address: renamed}
    assert conn.listener is renamed and conn.listener.scheme == "https"
    # One that drops the address leaves the connection with the settings it was accepted with.
    router.listeners = {}
    assert conn.listener is bound


def test_an_httplog_entry_becomes_haproxys_line_at_the_flush():
    from mux_router.access_log import httplog_line as _httplog_line
    accepted_ms = 1_764_936_000_123          # 2025-12-05 12:00:00.123 UTC
    fields = ("10.1.2.3", 40000, accepted_ms, "public", "app", "127.0.0.1:8081", 0.4, 0.0, 1.0, 2.6, 3.2,
              200, 1234, "--", 5, 5, 0, "GET /x HTTP/1.1")
    assert _httplog_line(fields, "") == ('10.1.2.3:40000 [05/Dec/2025:12:00:00.123] public app/127.0.0.1:8081 '
                                         '0/0/1/3/3 200 1234 - - -- 5/5/0/0/0 0/0 "GET /x HTTP/1.1"')
    assert _httplog_line(fields, "client went away").endswith('"GET /x HTTP/1.1" (client went away)')

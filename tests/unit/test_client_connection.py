"""mux_router.server.ClientConnection: what a connection knows of its listener across reloads."""
from __future__ import annotations

from types import SimpleNamespace

from frontgate.config import Address, Listener
from mux_router.server import ClientConnection


class Transport:
    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default


def test_a_connection_follows_reloads_of_its_listener():
    address = Address.parse("127.0.0.1:8080")
    bound = Listener("public", address)
    router = SimpleNamespace(listeners={address: bound})
    conn = ClientConnection(router, bound, Transport())
    assert conn.listener is bound
    # A reload replaces the router's listeners: the open connection's next request sees the new ones.
    renamed = Listener("outside", address, scheme="https")
    router.listeners = {address: renamed}
    assert conn.listener is renamed and conn.listener.scheme == "https"
    # One that drops the address leaves the connection with the settings it was accepted with.
    router.listeners = {}
    assert conn.listener is bound

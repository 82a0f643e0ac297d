"""backend_proxy.greeting: the PROXY v2 header a send_proxy server's new connection starts with."""
import pytest

from frontgate import proxy_protocol
from frontgate.config import Address, Server
from mux_router.backend_proxy import greeting

SERVER = Server(address=Address("127.0.0.1", 9000), send_proxy=True)


@pytest.mark.parametrize("client,listener,sni,expected", [
    (("203.0.113.9", 5000), Address("127.0.0.1", 8443), "maps.localhost",
     dict(command="PROXY", family="TCP4", src=("203.0.113.9", 5000), dst=("127.0.0.1", 8443), authority="maps.localhost")),
    (("2001:db8::1", 443), Address("127.0.0.1", 80), None,
     dict(command="PROXY", family="TCP6", src=("2001:db8::1", 443), dst=("::", 0), authority=None)),
    (("192.0.2.1", 1), Address("0.0.0.0", 80), None, dict(family="TCP4", dst=("0.0.0.0", 0))),
    (("192.0.2.1", 1), Address(path="/run/router.sock"), None, dict(family="TCP4", dst=("0.0.0.0", 0))),
    (("unknown", 0), Address(path="/run/router.sock"), None, dict(command="LOCAL", family="UNSPEC", src=None)),
])
def test_greeting(client, listener, sni, expected):
    header, used = proxy_protocol.decode(greeting(SERVER, *client, listener, sni))
    for key, value in expected.items():
        assert getattr(header, key) == value


def test_no_greeting_without_send_proxy():
    assert greeting(Server(address=Address("127.0.0.1", 9000)), "192.0.2.1", 1, Address("0.0.0.0", 80), None) == b""

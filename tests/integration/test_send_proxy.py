"""`send_proxy = true`: a backend that reads a PROXY v2 header first (as Varnish or another
frontgate does) gets one from the router on each new connection (the client's address and SNI)
and a LOCAL one from the health checker's probes, so it is both served and checked. Real
mux-router and health-checker processes, a real PROXY-speaking backend, real sockets."""
from __future__ import annotations

import asyncio
import socket

import pytest

from frontgate import health_state, proxy_protocol
from tests.helpers import free_port, start_daemon, stop_daemon, wait_until
from tests.integration.test_router import LoopThread


class ProxyBackend:
    """Closes any connection that does not start with a PROXY v2 header; answers each request
    with the header's command, source address and authority."""

    def __init__(self):
        self.headers: list[proxy_protocol.ProxyHeader] = []
        self.server = None
        self.port = 0

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        buf = bytearray()
        try:
            while (result := proxy_protocol.decode(buf)) is None:
                data = await reader.read(4096)
                if not data:
                    return
                buf += data
        except proxy_protocol.ProxyProtocolError:
            writer.close()              # what a PROXY-only server does with a bare request
            return
        header, used = result
        self.headers.append(header)
        rest = bytes(buf[used:])
        while True:
            while b"\r\n\r\n" not in rest:
                data = await reader.read(4096)
                if not data:
                    writer.close()
                    return
                rest += data
            _, rest = rest.split(b"\r\n\r\n", 1)
            src = f"{header.src[0]}:{header.src[1]}" if header.src else "-"
            body = f"{header.command} {src} {header.authority}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("send_proxy")
    loop = LoopThread()
    backend = ProxyBackend()
    loop.run(backend.start())
    public, proxied = free_port(), free_port()
    (tmp / "mux-router.toml").write_text(f"""
[router]
state_file = "state/health.json"
access_log_file = "-"
[listen.public]
address = "127.0.0.1:{public}"
[listen.tls]
address = "127.0.0.1:{proxied}"
proxy_protocol = true
scheme = "https"
[[app]]
name = "varnish"
hosts = ["maps.localhost"]
servers = [{{ address = "127.0.0.1:{backend.port}", send_proxy = true }}]
""")
    (tmp / "health-checker.toml").write_text("""
[checker]
router_config = "mux-router.toml"
heartbeat = 0.5
[defaults]
interval = 0.2
rise = 1
fall = 1
""")
    router = start_daemon(["mux-router", "--config", str(tmp / "mux-router.toml")], wait_for=("127.0.0.1", public))
    checker = start_daemon(["health-checker", "--config", str(tmp / "health-checker.toml")])
    try:
        yield tmp, backend, public, proxied
    finally:
        out = stop_daemon(checker) + stop_daemon(router)
        loop.stop()
    assert "Traceback" not in out, out


def _get(port: int, head: bytes = b"") -> tuple[bytes, tuple[str, int]]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head + b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data, s.getsockname()


def test_the_checker_probes_with_a_local_header_and_sees_the_server_up(env):
    tmp, backend, _, _ = env
    state_file = tmp / "state" / "health.json"

    def up():
        try:
            server = health_state.read(state_file).servers.get(f"varnish/127.0.0.1:{backend.port}")
        except OSError:
            return False
        return server is not None and server.state == "up" and server.last_check["detail"] == "HTTP 200"
    wait_until(up, timeout=10, what="the send_proxy server checked up")
    assert any(h.command == "LOCAL" for h in backend.headers)


def test_each_new_router_connection_carries_the_clients_address(env):
    _, backend, public, _ = env
    for _ in range(2):
        data, (ip, port) = _get(public)
        assert data.startswith(b"HTTP/1.1 200"), data
        # The client's own address and port: the connection was opened for this client alone.
        assert data.endswith(f"PROXY {ip}:{port} None".encode()), data


def test_the_terminators_client_and_sni_go_on(env):
    _, backend, _, proxied = env
    header = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        family="TCP4", src=("203.0.113.9", 50000), dst=("127.0.0.1", 443), authority="maps.localhost"))
    data, _ = _get(proxied, header)
    assert data.endswith(b"PROXY 203.0.113.9:50000 maps.localhost"), data

"""What the daemons take from their event loop instead of doing themselves.

The daemons run on uvloop (frontgate.daemon), which sets TCP_NODELAY on every TCP transport it
makes: connected, accepted by a server, or wrapped around an accepted socket. So neither daemon
sets it per connection. Small writes such as a PROXY header and a request head must not wait for
Nagle's algorithm; this test fails if a uvloop release stops doing it.
"""
from __future__ import annotations

import asyncio
import socket

import uvloop


def test_uvloop_tcp_transports_have_nodelay():
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        served: list[asyncio.Transport] = []

        class Served(asyncio.Protocol):
            def connection_made(self, transport):
                served.append(transport)

        server = await loop.create_server(Served, "127.0.0.1", 0)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        transports = []
        try:
            to_server, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
            to_listener, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
            sock, _ = await loop.sock_accept(listener)
            wrapped, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock)
            while not served:
                await asyncio.sleep(0.01)
            transports = [to_server, to_listener, wrapped, served[0]]
            return [t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    for t in transports]
        finally:
            for t in transports:
                t.close()
            listener.close()
            server.close()

    assert uvloop.run(asyncio.wait_for(main(), 10)) == [1, 1, 1, 1]

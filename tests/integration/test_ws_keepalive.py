"""tunnel_ping: the router pings a WebSocket tunnel's silent client and closes the tunnel when no
pong comes; a live client (the real `websockets` client, which answers pings) keeps its tunnel,
and the backend's own pings and frames pass untouched. Real mux-router, real websockets server."""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve

from tests.helpers import free_port, start_daemon, stop_daemon
from tests.integration.test_router import LoopThread

TIMEOUT = 10


async def echo(ws):
    async for message in ws:
        await ws.send(message)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws_keepalive")
    loop = LoopThread()
    ws_port, still_port, public = free_port(), free_port(), free_port()

    async def start():
        # One backend pings too (every 0.5 s, closing after 1 s without a pong): its pings must
        # reach the client and the client's pongs must reach it. The other never pings: what
        # closes a silent client there is the router alone.
        return (await ws_serve(echo, "127.0.0.1", ws_port, ping_interval=0.5, ping_timeout=1),
                await ws_serve(echo, "127.0.0.1", still_port, ping_interval=None))
    servers = loop.run(start())
    (tmp / "mux-router.toml").write_text(f"""
[router]
state_file = "state/health.json"
access_log_file = "-"
[listen.public]
address = "127.0.0.1:{public}"
[timeouts]
tunnel_ping = 1
[[app]]
name = "ws"
hosts = ["ws.localhost"]
servers = ["127.0.0.1:{ws_port}"]
[[app]]
name = "still"
hosts = ["still.localhost"]
servers = ["127.0.0.1:{still_port}"]
[[app]]
name = "quiet"
hosts = ["quiet.localhost"]
tunnel_ping = 0
servers = ["127.0.0.1:{still_port}"]
""")
    router = start_daemon(["mux-router", "--config", str(tmp / "mux-router.toml")], wait_for=("127.0.0.1", public))
    try:
        yield public
    finally:
        out = stop_daemon(router)
        for server in servers:
            loop.loop.call_soon_threadsafe(server.close)
        loop.stop()
    assert "Traceback" not in out, out


def test_a_client_that_answers_keeps_its_tunnel(env):
    async def talk():
        sock = socket.create_connection(("127.0.0.1", env))
        async with ws_connect(f"ws://ws.localhost:{env}/", sock=sock, open_timeout=TIMEOUT, ping_interval=None) as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "before"
            await asyncio.sleep(4)           # several of the router's pings (and the backend's), all answered
            await ws.send("after")
            return await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert asyncio.run(talk()) == "after"


def _silent_client(port: int, host: str) -> socket.socket:
    """Completes the upgrade and then reads nothing and answers nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until EOF or `seconds` pass: (closed, what arrived)."""
    data, deadline = b"", time.monotonic() + seconds
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


def test_a_client_that_does_not_answer_is_closed(env):
    s = _silent_client(env, "still.localhost")
    time.sleep(4)            # the router's ping goes unanswered
    closed, data = _closed_within(s, 15)
    s.close()
    assert closed
    assert b"\x89\x1afrontgate:" in data       # the router's ping frame reached it


def test_without_tunnel_ping_the_router_sends_nothing(env):
    s = _silent_client(env, "quiet.localhost")
    _, data = _closed_within(s, 3)
    s.close()
    assert data == b""                         # no ping: the tunnel stays, silent

"""Flap damping with a real health-checker and mux-router: a backend that answers 200 and 500 in
turn is held down as FLAPPING (state file, the router's /stats.json and /metrics, `frontgate
status`) while its checks still change, and let go once it has been steady for the hold-down."""
from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request

import pytest

from frontgate import health_state
from tests.helpers import BIN, REPO, free_port, start_daemon, stop_daemon, wait_until
from tests.integration.test_router import LoopThread


class FlappingBackend:
    """HTTP/1.1: while `flapping`, 200 and 500 in turn; else always 200."""

    def __init__(self):
        self.flapping = True
        self.answers = 0
        self.port = 0

    async def start(self):
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.answers += 1
        status = b"500 Oops" if self.flapping and self.answers % 2 else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flap")
    loop = LoopThread()
    backend = FlappingBackend()
    loop.run(backend.start())
    public, admin = free_port(), free_port()
    (tmp / "mux-router.toml").write_text(f"""
[router]
state_file = "state/health.json"
access_log_file = "-"
[admin]
address = "127.0.0.1:{admin}"
[listen.public]
address = "127.0.0.1:{public}"
[[app]]
name = "wobbly"
hosts = ["wobbly.localhost"]
servers = ["127.0.0.1:{backend.port}"]
""")
    # Every check can change the state (rise = fall = 1); quick decay, so the test sees the release.
    (tmp / "health-checker.toml").write_text("""
[checker]
router_config = "mux-router.toml"
heartbeat = 0.5
[defaults]
interval = 0.1
jitter = 0
rise = 1
fall = 1
[app.wobbly]
flap_half_life = 1
flap_max_hold = 2
""")
    router = start_daemon(["mux-router", "--config", str(tmp / "mux-router.toml")], wait_for=("127.0.0.1", admin))
    checker = start_daemon(["health-checker", "--config", str(tmp / "health-checker.toml")])
    try:
        yield tmp, backend, admin
    finally:
        out = stop_daemon(checker)
        out += stop_daemon(router)
        loop.stop()
    assert "Traceback" not in out, out
    assert "is FLAPPING: " in out and "no longer flapping" in out, out


def _server(tmp, backend):
    try:
        return health_state.read(tmp / "state" / "health.json").servers.get(f"wobbly/127.0.0.1:{backend.port}")
    except (OSError, health_state.HealthStateError):
        return None


def _admin(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def test_a_flapping_server_is_held_down_and_shown_as_flapping_then_let_go(env):
    tmp, backend, admin = env
    s = wait_until(lambda: (s := _server(tmp, backend)) is not None and s.flapping and s, timeout=15,
                   what="the flapping server held down")
    assert s.state == "down"

    def router_shows():
        server, = json.loads(_admin(admin, "/stats.json"))["apps"][0]["servers"]
        return server["status"] == "FLAPPING" and server
    assert "changing state too often" in wait_until(router_shows, timeout=10, what="FLAPPING on /stats.json")["why"]
    assert f'server_flapping{{app="wobbly",server="127.0.0.1:{backend.port}"}} 1' in _admin(admin, "/metrics")
    assert "FLAPPING" in _admin(admin, "/stats")
    status = subprocess.run([str(BIN / "frontgate"), "status", "--configs", str(tmp), "--supervisord-conf",
                             str(tmp / "none.conf"), "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["health"]["servers"][f"wobbly/127.0.0.1:{backend.port}"]["state"] == "flapping"

    # Still held down while its checks alternate; steady, it comes back after the hold-down.
    answers = backend.answers
    wait_until(lambda: backend.answers >= answers + 10, timeout=10, what="more checks")
    assert _server(tmp, backend).flapping
    backend.flapping = False
    up = wait_until(lambda: (s := _server(tmp, backend)) is not None and s.state == "up" and s, timeout=20,
                    what="let go once steady")
    assert not up.flapping

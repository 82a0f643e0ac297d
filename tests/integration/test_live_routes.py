"""Dynamic routes with the embedded file store: `frontgate route add/rm` on one host, applied by
a running router without a reload; static apps win; a kept-alive connection survives the swap;
the health checker checks the routes' servers. Convergence waits are bounded (wait_until, 5 s)."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket

import pytest

from frontgate import health_state
from tests.helpers import BIN, REPO, daemon_output, free_port, start_daemon, stop_daemon, wait_until
from tests.routes_fixtures import RouterNode, backends, frontgate  # noqa: F401 (fixture)

BOUND = 5.0       # seconds: the router stats the table file every 0.25 s


@pytest.fixture
def node(tmp_path, backends):
    n = RouterNode(tmp_path, "127.0.0.1", backends["static"].address).start()
    yield n
    n.stop()


def test_route_add_serves_without_reload_and_rm_stops(node, backends):
    assert node.get("blog.example.net")[0] == 404
    r = frontgate(node.configs, "route", "add", "blog.example.net", backends["blog"].address)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: node.serves("blog.example.net", "/x", "blog"), BOUND, what="route served")
    r = frontgate(node.configs, "route", "add", "blog.example.net/api", backends["api"].address, "--balance", "leastconn")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: node.serves("blog.example.net", "/api/v1", "api"), BOUND, what="longer prefix served")
    assert node.serves("blog.example.net", "/other", "blog")
    r = frontgate(node.configs, "route", "rm", "blog.example.net/api")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: node.serves("blog.example.net", "/api/v1", "blog"), BOUND, what="prefix removed")
    frontgate(node.configs, "route", "rm", "blog.example.net")
    wait_until(lambda: node.get("blog.example.net")[0] == 404, BOUND, what="route removed")
    assert "reload" not in daemon_output(node.proc).lower()


def test_a_reload_keeps_serving_the_routes(node, backends):
    """SIGHUP re-reads the static config; the routes are merged into it, not dropped until the
    table changes next."""
    frontgate(node.configs, "route", "add", "blog.example.net", backends["blog"].address)
    wait_until(lambda: node.serves("blog.example.net", "/", "blog"), BOUND, what="route served")
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in daemon_output(node.proc), BOUND, what="reload logged")
    assert node.serves("blog.example.net", "/", "blog")


def test_a_kept_alive_connection_keeps_working_across_table_swaps(node, backends):
    frontgate(node.configs, "route", "add", "blog.example.net", backends["blog"].address)
    wait_until(lambda: node.serves("blog.example.net", "/", "blog"), BOUND)
    conn = http.client.HTTPConnection(node.ip, node.port, timeout=5)
    conn.request("GET", "/", headers={"Host": "blog.example.net"})
    assert conn.getresponse().read().startswith(b"blog")
    frontgate(node.configs, "route", "add", "other.example.net", backends["other"].address)
    wait_until(lambda: node.serves("other.example.net", "/", "other"), BOUND)
    conn.request("GET", "/again", headers={"Host": "blog.example.net"})       # same socket
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"blog /again")
    conn.close()


def test_static_apps_win_and_a_route_they_cover_is_refused(node, backends):
    r = frontgate(node.configs, "route", "add", "static.example.net/x", backends["other"].address)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "static app 'static'" in r.stderr, r.stderr
    # A table written by hand cannot take the name either: the static app is tried first.
    node.table.write_text(json.dumps({"format": 1, "version": 1, "routes": [
        {"host": "static.example.net", "path": "/", "servers": [backends["other"].address]},
        {"host": "new.example.net", "path": "/", "servers": [backends["other"].address]}]}))
    wait_until(lambda: node.serves("new.example.net", "/", "other"), BOUND)
    assert node.serves("static.example.net", "/", "static")


@pytest.mark.parametrize("args, message", [
    (["bad_host.example", "127.0.0.1:1"], "bad host"),
    (["ok.example.net", "127.0.0.1:70000"], "bad server"),
    (["ok.example.net", "nohost"], "bad server"),
    (["ok.example.net/a/../b", "127.0.0.1:1"], "bad path"),
])
def test_bad_input_is_one_line_and_exit_2(node, args, message):
    r = frontgate(node.configs, "route", "add", *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_an_invalid_table_file_keeps_the_last_good_one(node, backends):
    frontgate(node.configs, "route", "add", "blog.example.net", backends["blog"].address)
    wait_until(lambda: node.serves("blog.example.net", "/", "blog"), BOUND)
    node.table.write_text('{"format": 1, "version": 9, "routes": [{"host": "x", "servers": ["nope"]}]}')
    wait_until(lambda: "route table" in daemon_output(node.proc) and "is invalid" in daemon_output(node.proc), BOUND)
    assert node.serves("blog.example.net", "/", "blog")


def test_the_health_checker_checks_dynamic_routes_servers(node, backends, tmp_path):
    (node.configs / "health-checker.toml").write_text(
        '[checker]\nrouter_config = "mux-router.toml"\nheartbeat = 1\n[defaults]\ninterval = 0.2\n')
    checker = start_daemon(["health-checker", "--config", str(node.configs / "health-checker.toml")])
    try:
        frontgate(node.configs, "route", "add", "blog.example.net", backends["blog"].address)
        key = f"route:blog.example.net/{backends['blog'].address}"
        state_file = node.configs / "state" / "health.json"

        def checked():
            try:
                server = health_state.read(state_file).servers.get(key)
            except (OSError, health_state.HealthStateError):
                return False
            return server is not None and server.last_check.get("ok")
        wait_until(checked, BOUND, what="the route's server checked")
        frontgate(node.configs, "route", "rm", "blog.example.net")
        wait_until(lambda: key not in health_state.read(state_file).servers, BOUND, what="server dropped")
    finally:
        stop_daemon(checker)


def ws_echo(node, host: str) -> str:
    """A WebSocket echo through the router with the real client: the echo, or `refused STATUS`."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    try:
        with connect(f"ws://{host}/socket", sock=socket.create_connection((node.ip, node.port), timeout=5),
                     open_timeout=5) as ws:
            ws.send("hello")
            return ws.recv(timeout=5)
    except InvalidStatus as e:
        return f"refused {e.response.status_code}"


def test_the_websocket_flag_refuses_upgrades_where_it_is_off(tmp_path, backends):
    """Routes tunnel WebSocket upgrades unless added with --no-websocket; a static app unless it
    says `websocket = false`. A refused upgrade is a 403 from the router, never forwarded."""
    port = free_port()
    demo = start_daemon([str(BIN / "python"), str(REPO / "scripts" / "demo_app.py"), "--name", "chat", "--port",
                         str(port), "--websocket-path", "/socket"], wait_for=("127.0.0.1", port))
    node = RouterNode(tmp_path, "127.0.0.1", backends["static"].address)
    node.config.write_text(node.config.read_text() + f"""
[[app]]
name = "quiet"
hosts = ["quiet.example.net"]
servers = ["127.0.0.1:{port}"]
websocket = false
[[app]]
name = "chat"
hosts = ["chat.example.net"]
servers = ["127.0.0.1:{port}"]
""")
    node.start()
    try:
        assert frontgate(node.configs, "route", "add", "ws.example.net", f"127.0.0.1:{port}").returncode == 0
        r = frontgate(node.configs, "route", "add", "plain.example.net", f"127.0.0.1:{port}", "--no-websocket")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: node.get("plain.example.net")[0] == 200, BOUND, what="routes served")
        assert ws_echo(node, "chat.example.net") == "hello"
        assert ws_echo(node, "ws.example.net") == "hello"
        assert ws_echo(node, "quiet.example.net") == "refused 403"
        assert ws_echo(node, "plain.example.net") == "refused 403"
        assert node.get("plain.example.net")[0] == 200      # plain requests still served
        assert "no-websocket" in frontgate(node.configs, "route", "ls").stdout
    finally:
        node.stop()
        stop_daemon(demo)


def test_route_add_wait_returns_when_every_router_process_swapped_the_table_in(tmp_path, backends):
    """--wait with the file store: each router process records the table version it swapped in
    (run/status); the CLI waits for all live ones of this config, and names one that lags."""
    node = RouterNode(tmp_path, "127.0.0.1", backends["static"].address).start("mux-router_00")
    second = node.spawn("mux-router_01")          # SO_REUSEPORT: both take connections
    wait_until(lambda: len(list(node.status_dir.glob("mux-router_0*.json"))) == 2, BOUND, what="both recorded")
    try:
        r = frontgate(node.configs, "route", "add", "blog.example.net", backends["blog"].address, "--wait")
        assert r.returncode == 0, r.stderr
        for _ in range(8):           # no wait_until: --wait returned, so every process serves it
            assert node.serves("blog.example.net", "/", "blog")
        os.kill(second.pid, signal.SIGSTOP)      # alive but applying nothing
        try:
            r = frontgate(node.configs, "route", "add", "other.example.net", backends["other"].address, "--wait")
            assert r.returncode == 1, r.stdout + r.stderr
            assert f"still behind version 2: mux-router_01[{second.pid}] (version 1)" in r.stderr, r.stderr
            assert "mux-router_00" not in r.stderr
        finally:
            os.kill(second.pid, signal.SIGCONT)
        r = frontgate(node.configs, "route", "rm", "other.example.net", "--wait")
        assert r.returncode == 0, r.stderr
        r = frontgate(node.configs, "route", "rm", "blog.example.net", "--wait")   # an empty table has a version too
        assert r.returncode == 0, r.stderr
        assert node.get("blog.example.net")[0] == 404
    finally:
        stop_daemon(second)
        node.stop()

"""Dynamic routes with the embedded file store: `frontgate route add/rm` on one host, applied by
a running router without a reload; static apps win; a kept-alive connection survives the swap;
the health checker checks the routes' servers. Convergence waits are bounded (wait_until, 5 s)."""
from __future__ import annotations

import http.client
import json
import signal

import pytest

from frontgate import health_state
from tests.helpers import BIN, daemon_output, start_daemon, stop_daemon, wait_until
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

"""SIGHUP and listener settings, with real processes: every property of a bound router listener
takes effect for the connections accepted after the reload; what only a restart can change (the
terminator's listen address and privileges, either stage's [admin] listener) makes the reload
fail with `file: key: needs a restart`, and the running config keeps serving."""
from __future__ import annotations

import json
import signal
import socket

import pytest

from frontgate import proxy_protocol
from tests.helpers import daemon_output, free_port, start_daemon, stop_daemon, wait_until
from tests.integration.test_router import Backend, LoopThread, RawClient, header_values
from tests.integration.test_terminator import Pki, RouterStub, Terminator, connect, echo_once

ROUTER_TOML = """
[router]
access_log_file = "-"
state_file = "{state}"
trusted_sources = ["127.0.0.1/32"]
{admin}
[listen.edge]
address = "127.0.0.1:{port}"
{listener}
[[app]]
name = "{app}"
hosts = ["a.localhost"]
servers = ["{backend}"]
"""


class Router:
    def __init__(self, tmp, admin_port: int | None = None):
        self.tmp = tmp
        self.loop = LoopThread()
        self.backend = Backend("a")
        self.loop.run(self.backend.start())
        self.port = free_port()
        self.config = tmp / "mux-router.toml"
        self.admin_port = admin_port
        self.write()
        self.proc = start_daemon(["mux-router", "--config", str(self.config)], wait_for=("127.0.0.1", self.port))

    def write(self, listener: str = "", app: str = "one", admin_port: int | None = None):
        admin_port = admin_port or self.admin_port
        admin = f'[admin]\naddress = "127.0.0.1:{admin_port}"\nstats_dir = "{self.tmp / "stats"}"' if admin_port else ""
        self.config.write_text(ROUTER_TOML.format(state=self.tmp / "health.json", port=self.port, listener=listener,
                                                  app=app, backend=self.backend.address, admin=admin))

    def sighup(self, expect: str) -> str:
        """SIGHUP; waits for one more log line containing `expect` and returns it."""
        before = self.output().count(expect)
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.output().count(expect) > before, what=expect)
        return [line for line in self.output().splitlines() if expect in line][-1]

    def output(self) -> str:
        return daemon_output(self.proc)

    def stop(self) -> str:
        out = stop_daemon(self.proc)
        self.loop.run(self.backend.kill())
        self.loop.stop()
        return out


@pytest.fixture
def router(tmp_path):
    r = Router(tmp_path)
    try:
        yield r
    finally:
        out = r.stop()
    assert "Traceback" not in out, out


def plain_get(port: int, source: str = "127.0.0.1") -> tuple[int, dict] | None:
    """(status, echo or {}) for a GET without a PROXY header on a new connection; None when the
    router closed it without an answer."""
    client = RawClient(port, source)
    try:
        client.send(b"GET /p HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
        try:
            status, headers, body = client.response()
        except (EOFError, ConnectionError):
            return None
    finally:
        client.close()
    return status, json.loads(body) if headers.get("content-type") == "application/json" else {}


def proxied_get(port: int) -> tuple[int, dict]:
    header = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("203.0.113.9", 4000), dst=("127.0.0.1", 443)))
    client = RawClient(port)
    try:
        client.send(header + b"GET /p HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\n")
        status, _, body = client.response()
    finally:
        client.close()
    return status, json.loads(body)


def test_proxy_protocol_and_scheme_of_a_bound_listener_follow_a_reload(router):
    status, echo = plain_get(router.port)
    assert status == 200 and header_values(echo, "X-Forwarded-Proto") == ["http"]
    early = RawClient(router.port)                      # accepted before the change
    assert early.request("a.localhost", "/early")[0] == 200

    router.write(listener='proxy_protocol = true\nscheme = "https"')
    line = router.sighup("reloaded")
    assert "needs a restart" not in line
    # New connections: the PROXY header is required, and what it says is believed.
    assert plain_get(router.port) == (400, {})
    assert "changed, for new connections: edge, https, PROXY v2 required" in router.output()
    assert plain_get(router.port, source="127.0.0.2") is None     # not a trusted source: closed unanswered
    status, echo = proxied_get(router.port)
    assert status == 200
    assert header_values(echo, "X-Forwarded-For") == ["203.0.113.9"]
    assert header_values(echo, "X-Forwarded-Proto") == ["https"]
    # A connection accepted before keeps what it had agreed on (no PROXY header); the scheme it
    # reports is the listener's current one.
    status, _, body = early.request("a.localhost", "/early-again")
    early.close()
    assert status == 200 and header_values(json.loads(body), "X-Forwarded-Proto") == ["https"]

    router.write()                                      # and back
    router.sighup("reloaded")
    status, echo = plain_get(router.port)
    assert status == 200 and header_values(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(echo, "X-Forwarded-Proto") == ["http"]


def test_an_admin_address_change_is_refused_and_the_old_config_serves_on(tmp_path):
    admin_port = free_port()
    r = Router(tmp_path, admin_port=admin_port)
    try:
        wait_until(lambda: _accepts(admin_port), what="admin listener")
        moved = free_port()
        r.write(app="two", admin_port=moved)            # a route change too: not applied either
        line = r.sighup("reload failed")
        assert f"{r.config}: admin.address: needs a restart" in line, line
        assert plain_get(r.port)[1]["name"] == "a" and "reloaded" not in r.output()
        assert _accepts(admin_port) and not _accepts(moved)
        assert r.proc.poll() is None
    finally:
        out = r.stop()
    assert "Traceback" not in out, out


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the terminator

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("reload-pki"))


def test_terminator_listen_change_is_refused_forward_to_change_applies(pki):
    first, second = RouterStub(), RouterStub()
    site = pki.issue("site", "app.test")
    t = Terminator(pki.dir, site, f"127.0.0.1:{first.port}")
    try:
        with connect(t.port, pki.client_context(), "app.test") as s:
            assert echo_once(s) == b"ping"
        assert first.connections == 1

        # forward_to: new connections go to the new address.
        t.write_config(site, f"127.0.0.1:{second.port}")
        t.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: t.output().count("reloaded") == 1, what="reload")
        with connect(t.port, pki.client_context(), "app.test") as s:
            assert echo_once(s) == b"ping"
        assert (first.connections, second.connections) == (1, 1)

        # listen: refused whole; the old listener and forward_to stay.
        old_port, t.port = t.port, free_port()
        t.write_config(site, f"127.0.0.1:{first.port}")
        t.port = old_port
        t.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in t.output(), what="reload refused")
        line = next(l for l in t.output().splitlines() if "reload failed" in l)
        assert f"{t.config}: terminator.listen: needs a restart" in line, line
        with connect(t.port, pki.client_context(), "app.test") as s:
            assert echo_once(s) == b"ping"
        assert (first.connections, second.connections) == (1, 2)
        assert t.proc.poll() is None
    finally:
        t.stop()
        first.stop()
        second.stop()

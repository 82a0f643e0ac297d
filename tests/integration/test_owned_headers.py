"""The fields the router owns (README: Security model, Headers the router owns), end to end: a real
mux-router subprocess (with the markers of test_router_fastpath: pooled or fresh backend
connection), a real backend that
records every byte it got, raw sockets from 127.0.0.2 as the outside (trusted_sources is
127.0.0.1/32). Forged copies in any spelling, in the head or in chunked trailers, on a fresh or
a pooled backend connection, never reach the backend."""
from __future__ import annotations

import json
import sys
import time

import pytest

from tests.helpers import daemon_output, free_port, start_daemon, stop_daemon
from tests.integration.test_router import Backend, LoopThread, RawClient, header_values
from tests.integration.test_router_fastpath import INSTRUMENT

ROUTER_TOML = """
[router]
access_log_file = "-"
state_file = "{state}"
trusted_sources = ["127.0.0.1/32"]
[listen.public]
address = "127.0.0.1:{port}"
[timeouts]
http_request = 2
[[app]]
name = "id"
hosts = ["id.localhost"]
request_headers = {{ set = {{ X-App-Role = "reader" }} }}
servers = ["{backend}"]
"""

# Each forged value is unique, so that finding it anywhere in what the backend got is the failure.
FORGED_HEAD = ("X_Client_Cert_Subject: head-subject-admin\r\n"
               "X_Forwarded_For: 1.2.3.4\r\n"
               "X_Real_IP: 1.2.3.5\r\n"
               "x-real_ip: 1.2.3.6\r\n"
               "X_Forwarded_Proto: gopher-head\r\n"
               "X_App_Role: head-role-admin\r\n"
               "X-Forwarded-Ssl: head-ssl-on\r\n")
FORGED_TRAILERS = (b"X_Client_Cert_Subject: trailer-subject-admin\r\n"
                   b"X_Forwarded_For: 4.3.2.1\r\n"
                   b"X-Checksum: kept\r\n"
                   b"X_Real_IP: 4.3.2.2\r\n"
                   b"x-real_ip: 4.3.2.3\r\n"
                   b"X-Forwarded-For: 4.3.2.4\r\n"
                   b"X-App-Role: trailer-role-admin\r\n"
                   b"X_Forwarded_Port: 4433-trailer\r\n")
FORGED_VALUES = [b"head-subject-admin", b"1.2.3.4", b"1.2.3.5", b"1.2.3.6", b"gopher-head", b"head-role-admin",
                 b"trailer-subject-admin", b"4.3.2.1", b"4.3.2.2", b"4.3.2.3", b"4.3.2.4", b"trailer-role-admin",
                 b"head-ssl-on", b"4433-trailer"]


class Env:
    def __init__(self, tmp):
        self.loop = LoopThread()
        self.backend = Backend("id")
        self.loop.run(self.backend.start())
        self.port = free_port()
        config = tmp / "mux-router.toml"
        config.write_text(ROUTER_TOML.format(state=tmp / "health.json", port=self.port, backend=self.backend.address))
        self.proc = start_daemon([sys.executable, "-c", INSTRUMENT, "--config", str(config)],
                                 wait_for=("127.0.0.1", self.port))

    def received(self, send) -> tuple[dict, bytes]:
        """The backend's echo of what `send(client)` asked for, and the bytes it got meanwhile."""
        before = len(self.backend.raw)
        client = RawClient(self.port, source="127.0.0.2")
        try:
            send(client)
            status, _, body = client.response()
        finally:
            client.close()
        assert status == 200, body
        return json.loads(body), bytes(self.backend.raw[before:])

    def path_of(self, target: str) -> list[str]:
        return [line.split(" ", 1)[0] for line in daemon_output(self.proc).splitlines()
                if line.startswith(("POOLED ", "FRESH ")) and f" {target} HTTP/1.1" in line]

    def stop(self) -> str:
        out = stop_daemon(self.proc)
        self.loop.run(self.backend.kill())
        self.loop.stop()
        return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("owned"))
    try:
        yield e
    finally:
        out = e.stop()
    assert "Traceback" not in out, out


def assert_none_forged(got: bytes):
    assert [v for v in FORGED_VALUES if v in got] == [], got


def get_with_forged_head(target):
    return lambda c: c.send(f"GET {target} HTTP/1.1\r\nHost: id.localhost\r\n{FORGED_HEAD}"
                            f"Connection: close\r\n\r\n".encode())


def test_forged_head_fields_on_a_fresh_backend_connection(env):
    # A cold pool (first request of the module, or after the backend closed its connections).
    # The connection taken is asserted, not assumed.
    echo, got = env.received(get_with_forged_head("/engine"))
    assert env.path_of("/engine") == ["FRESH"]
    assert_none_forged(got)
    assert header_values(echo, "X-Real-IP") == ["127.0.0.2"]
    assert header_values(echo, "X-Forwarded-For") == ["127.0.0.2"]
    assert header_values(echo, "X-App-Role") == ["reader"]


def test_forged_head_fields_on_a_pooled_backend_connection(env):
    warm = RawClient(env.port)      # leaves an idle pooled backend connection
    assert warm.request("id.localhost", "/warm")[0] == 200
    warm.close()
    time.sleep(0.05)
    echo, got = env.received(get_with_forged_head("/fast"))
    assert env.path_of("/fast") == ["POOLED"]
    assert_none_forged(got)
    assert header_values(echo, "X-Real-IP") == ["127.0.0.2"]
    assert header_values(echo, "X-App-Role") == ["reader"]


@pytest.mark.parametrize("split", [False, True])
def test_forged_trailers_and_head_fields_of_a_chunked_upload(env, split):
    target = f"/upload-{int(split)}"

    def send(c):
        c.send(f"POST {target} HTTP/1.1\r\nHost: id.localhost\r\nTransfer-Encoding: chunked\r\n{FORGED_HEAD}"
               f"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n".encode())
        if split:                   # the trailer section in pieces, the empty line last
            for line in FORGED_TRAILERS.splitlines(keepends=True):
                time.sleep(0.02)
                c.send(line)
            time.sleep(0.02)
            c.send(b"\r\n")
        else:
            c.send(FORGED_TRAILERS + b"\r\n")

    echo, got = env.received(send)
    assert len(env.path_of(target)) == 1
    assert_none_forged(got)
    assert echo["body"] == "hello"
    assert [n for n, _ in echo["headers"] if n.startswith("trailer:")] == ["trailer:X-Checksum"]
    assert header_values(echo, "X-Real-IP") == ["127.0.0.2"]


def test_a_trusted_client_underscore_forwarded_for_is_dropped_its_dash_form_extended(env):
    client = RawClient(env.port, source="127.0.0.1")
    try:
        status, _, body = client.request("id.localhost", "/trusted",
                                         "X-Forwarded-For: 9.9.9.9\r\nX_Forwarded_For: 1.2.3.4\r\nConnection: close\r\n")
    finally:
        client.close()
    echo = json.loads(body)
    assert status == 200 and header_values(echo, "X-Forwarded-For") == ["9.9.9.9, 127.0.0.1"]
    assert [n for n, _ in echo["headers"] if "_" in n] == []

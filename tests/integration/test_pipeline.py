"""The whole pipeline as real subprocesses on ephemeral ports: demo apps, health-checker, mux-router,
tls-terminator; driven by curl, openssl s_client, http.client and the websockets client."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import pytest
import websockets

from frontgate import health_state
from tests.helpers import stop_daemon, wait_until
from tests.pipeline import running_pipeline


@pytest.fixture
def pipeline(tmp_path):
    yield from running_pipeline(tmp_path)


def test_curl_reaches_each_app_through_both_stages(pipeline):
    for host, app in (("maps.localhost", "maps"), ("coltrane.localhost", "coltrane"), ("x.coltrane.localhost", "coltrane")):
        r = pipeline.curl("--cacert", "/dev/null", "-k", "--resolve", f"{host}:{pipeline.tls_port}:127.0.0.1",
                          f"https://{host}:{pipeline.tls_port}/hello?x=1", "-w", "\n%{http_code}")
        assert r.returncode == 0, r.stderr
        body, _, status = r.stdout.rpartition("\n")
        assert status == "200" and app in body, r.stdout


def test_backend_sees_real_client_address_and_https(pipeline):
    # The client connects from 127.0.0.3; the terminator's own connection to the router comes from
    # 127.0.0.1, so only the PROXY v2 header can tell the router who the client was.
    status, _, body = pipeline.https_get("maps.localhost", "/whoami", source="127.0.0.3")
    assert status == 200
    assert "X-Forwarded-For: 127.0.0.3" in body and "X-Forwarded-Proto: https" in body, body


def test_openssl_s_client_gets_the_certificate_for_the_sni_name(pipeline):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{pipeline.tls_port}",
                        "-servername", "maps.localhost", "-brief", "-ign_eof"],
                       input="GET / HTTP/1.1\r\nHost: maps.localhost\r\nConnection: close\r\n\r\n",
                       capture_output=True, text=True, timeout=20)
    assert "Protocol version: TLSv1.3" in r.stderr, r.stderr
    assert "HTTP/1.1 200" in r.stdout and "maps" in r.stdout, r.stdout


def test_websocket_echo_through_both_stages(pipeline):
    async def talk():
        uri = f"wss://maps.localhost:{pipeline.tls_port}/socket"
        sock = socket.create_connection(("127.0.0.1", pipeline.tls_port))
        async with websockets.connect(uri, ssl=pipeline.client_context(), sock=sock,
                                      server_hostname="maps.localhost", open_timeout=10) as ws:
            replies = []
            for msg in ["hello", "x" * 100_000, "bye"]:
                await ws.send(msg)
                replies.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(b"\x00\x01binary")
            replies.append(await asyncio.wait_for(ws.recv(), 10))
            return replies
    assert asyncio.run(talk()) == ["hello", "x" * 100_000, "bye", b"\x00\x01binary"]


def test_plain_http_from_outside_is_redirected_and_local_is_served(pipeline):
    outside = pipeline.curl("--interface", "127.0.0.2", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                            "-H", "Host: maps.localhost", f"http://127.0.0.1:{pipeline.public_port}/a?b=1")
    assert outside.stdout == "301 https://maps.localhost/a?b=1", outside
    local = pipeline.curl("-w", "\n%{http_code}", "-H", "Host: maps.localhost",
                          f"http://127.0.0.1:{pipeline.public_port}/a?b=1")
    assert local.stdout.endswith("\n200") and "maps" in local.stdout


def test_unknown_host_is_404_and_malformed_request_is_400(pipeline):
    status, _, _ = pipeline.https_get("nobody.localhost")
    assert status == 404
    with socket.create_connection(("127.0.0.1", pipeline.public_port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: maps.localhost\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")


def test_killed_backend_gives_502_then_is_skipped_once_marked_down(pipeline):
    dead_port = pipeline.maps_ports[1]
    key = f"maps/127.0.0.1:{dead_port}"
    stop_daemon(pipeline.procs.pop(f"maps:{dead_port}"))
    # retries = 0 for maps: until the checker notices (3 failures 0.5 s apart), round robin sends
    # every other request to the dead server.
    statuses = [pipeline.https_get("maps.localhost")[0] for _ in range(4)]
    assert sorted(statuses) == [200, 200, 502, 502], statuses
    wait_until(lambda: health_state.read(pipeline.state_file).servers[key].state == "down", timeout=10,
               what="checker marks the dead server down")
    time.sleep(1.0)   # the router follows the state file within a second
    assert [pipeline.https_get("maps.localhost")[0] for _ in range(6)] == [200] * 6
    # The last server goes too: all down is 503.
    live = pipeline.maps_ports[0]
    stop_daemon(pipeline.procs.pop(f"maps:{live}"))
    wait_until(lambda: health_state.read(pipeline.state_file).servers[f"maps/127.0.0.1:{live}"].state == "down",
               timeout=10, what="checker marks the last server down")
    time.sleep(1.0)
    assert pipeline.https_get("maps.localhost")[0] == 503

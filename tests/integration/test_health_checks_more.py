"""The richer checks against real listeners on 127.0.0.1: HTTP method, body match, TLS handshake;
the daemon with per-server overrides; and the state file under `kill -9`: never torn."""
from __future__ import annotations

import asyncio
import random
import signal
import ssl
import threading
import time

import pytest
import trustme

from frontgate import health_state
from frontgate.config import Address, CheckSpec
from health_checker.probes import probe
from tests.helpers import BIN, free_port, start_daemon, stop_daemon, wait_until
from tests.integration.test_health_checker import CheckerRun, backends, checker  # noqa: F401 (fixtures)


async def answer_with(response: bytes, ssl_ctx: ssl.SSLContext | None = None):
    """A server that reads the request head and answers `response`, recording the head."""
    heads: list[bytes] = []

    async def handle(reader, writer):
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_ctx)
    return server, server.sockets[0].getsockname()[1], heads


def check(response: bytes, spec: CheckSpec, ssl_ctx: ssl.SSLContext | None = None, host: str = "maps.localhost"):
    async def go():
        server, port, heads = await answer_with(response, ssl_ctx)
        async with server:
            return await probe(Address("127.0.0.1", port), spec, host), heads
    return asyncio.run(go())


def test_method_and_status_list():
    result, heads = check(b"HTTP/1.1 304 Not Modified\r\n\r\n", CheckSpec(method="HEAD", expect_status=((200, 299), (304, 304))))
    assert heads[0].startswith(b"HEAD / HTTP/1.1\r\n") and result.ok and result.detail == "HTTP 304"


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nstatus: all ok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nstatus: \r\n6\r\nall ok\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\n\nstatus: all ok",                      # no headers, bare LF, body to EOF
])
def test_body_match(response):
    result, _ = check(response, CheckSpec(expect_body="all ok"))
    assert result.ok and result.detail == "HTTP 200", result


def test_body_mismatch_and_a_body_cut_at_its_length():
    result, _ = check(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstatus: all ok", CheckSpec(expect_body="all ok"))
    assert not result.ok and result.detail == "HTTP 200, body mismatch: 'all ok' not in the body"
    big = b"x" * 100_000 + b"all ok"
    result, _ = check(b"HTTP/1.1 200 OK\r\n\r\n" + big, CheckSpec(expect_body="all ok"))
    assert result.detail == "HTTP 200, body mismatch: 'all ok' not in the first 65536 bytes of the body"


@pytest.fixture(scope="module")
def tls_server_context():
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("maps.localhost").configure_cert(ctx)
    return ctx


def test_tls_handshake_without_verification(tls_server_context):
    result, _ = check(b"", CheckSpec(type="tls"), ssl_ctx=tls_server_context)
    assert result.ok and result.detail == "TLS handshake ok (TLSv1.3)", result


def test_tls_verification_rejects_an_unknown_ca(tls_server_context):
    result, _ = check(b"", CheckSpec(type="tls", tls_verify=True), ssl_ctx=tls_server_context)
    assert not result.ok and result.detail.startswith("TLS handshake failed: "), result
    assert "local issuer" in result.detail, result


def test_tls_check_of_a_plain_server_fails():
    async def go():
        async def handle(reader, writer):      # answers in plain text at once, as a non-TLS server would
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            return await probe(Address("127.0.0.1", server.sockets[0].getsockname()[1]),
                               CheckSpec(type="tls", timeout=2), "h")
    result = asyncio.run(go())
    assert not result.ok and result.detail.startswith("TLS handshake failed: "), result
    assert result.took_ms < 1000


def test_tls_check_of_a_silent_server_times_out():
    silent = __import__("socket").socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        result = asyncio.run(probe(Address("127.0.0.1", silent.getsockname()[1]), CheckSpec(type="tls", timeout=0.3), "h"))
    finally:
        silent.close()
    assert not result.ok and result.detail == "timeout after 0.3s (TLS handshake)"


def test_daemon_per_server_override_and_body_mismatch_logged(checker, backends):  # noqa: F811
    a, b = backends.start(free_port(), name="maps"), backends.start(free_port(), name="maps")
    checker.write_configs({"web": [a, b], "body": [a]}, overrides=f"""
[app.body]
expect_body = "no such text"
[app.web.servers."127.0.0.1:{b}"]
path = "/status/503"
expect_status = "200-299,404"
""")
    checker.start()
    assert checker.wait_for(f"web/127.0.0.1:{a}", "up").last_check["detail"] == "HTTP 200"
    assert checker.wait_for(f"web/127.0.0.1:{b}", "down").last_check["detail"] == "HTTP 503 (expected 200-299,404)"
    body = checker.wait_for(f"body/127.0.0.1:{a}", "down")
    assert body.last_check["detail"] == "HTTP 200, body mismatch: 'no such text' not in the body"
    log = checker.output()
    assert f"web/127.0.0.1:{b} is DOWN: HTTP 503 (expected 200-299,404)" in log
    assert f"body/127.0.0.1:{a} is DOWN: HTTP 200, body mismatch: 'no such text' not in the body" in log


def test_kill_9_the_checker_in_a_loop_never_leaves_a_torn_state_file(tmp_path):
    """The checker rewrites a ~20 KB state file as fast as it can (heartbeat 10 ms) and is killed
    with SIGKILL at random moments, again and again, while readers read the file without pause:
    every read gives a whole, valid file (the old one or the new one)."""
    run = CheckerRun(tmp_path)
    # 150 servers on closed ports: a ~20 KB file, changing state often at the start.
    ports = random.sample(range(41000, 42000), 150)
    run.write_configs({"many": ports}, heartbeat=0.01,
                      overrides="[app.many]\ntype = 'tcp'\ntimeout = 0.2\n")
    stop_reading = threading.Event()
    reads, problems = [0], []

    def reader():
        follower = health_state.StateFollower(run.state_file, stale_after=60)
        while not stop_reading.is_set():
            try:
                state = health_state.read(run.state_file)
                assert len(state.servers) in (0, 150)
                reads[0] += 1
            except FileNotFoundError:
                pass           # only before the first write
            except Exception as e:      # a torn or invalid file
                problems.append(repr(e))
            follower.refresh()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    kills, deadline = 0, time.monotonic() + 20
    started = []          # killed in `finally` whatever happens: a leaked one would spin at 10 ms
    try:
        for _ in range(4):
            if time.monotonic() > deadline:
                break
            proc = start_daemon([str(BIN / "health-checker"), "--config", str(run.checker_toml)])
            started.append(proc)
            # Kill at a random moment once it is writing (its pid in the file), or during start.
            wait_until(lambda: (s := run.state()) is not None and s.checker_pid == proc.pid, timeout=10,
                       interval=0.01, what="the checker writing")
            time.sleep(random.uniform(0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
            proc.log_path.unlink(missing_ok=True)
            kills += 1
    finally:
        stop_reading.set()
        for t in threads:
            t.join(5)
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    generation = run.state().generation
    torn_writes = len(list((tmp_path / "state").glob(".health.json.*.tmp")))
    print(f"\n{kills} kills with SIGKILL ({torn_writes} mid-write), {reads[0]} reads, generation {generation}, "
          f"{len(problems)} bad reads")
    assert kills >= 2 and reads[0] > 50 and generation > 10
    assert problems == []

    # A killed writer may leave its temp file behind; the next checker removes it.
    leftover = tmp_path / "state" / ".health.json.killed.tmp"
    leftover.write_text("{half a fil")
    run.start()
    try:
        wait_until(lambda: not leftover.exists(), timeout=5, what="leftover temp file removed")
    finally:
        # Stopped before the check below: while it runs, its own write in progress has a temp file.
        stop_daemon(run.proc)
    assert list((tmp_path / "state").glob(".health.json.*.tmp")) == []


def test_downinter_slows_checks_of_a_down_server_and_a_reload_checks_at_once(checker, backends):  # noqa: F811
    port = backends.start(free_port())
    key = f"web/127.0.0.1:{port}"
    slow_down = '[app.web]\npath = "/status/500"\nrise = 1\nfall = 1\ndowninter = 30\n'
    checker.write_configs({"web": [port]}, overrides=slow_down)
    checker.start()
    checker.wait_for(key, "down")
    time.sleep(1.0)       # interval 0.2: five checks if downinter were ignored
    assert checker.output().count(f"{key} is DOWN") == 1
    assert " check failed" not in checker.output()
    # Fixed check, SIGHUP: checked at once with the new settings, not 30 s later.
    checker.write_configs({"web": [port]}, overrides=slow_down.replace("/status/500", "/status/200"))
    reloaded = time.monotonic()
    checker.proc.send_signal(signal.SIGHUP)
    checker.wait_for(key, "up", timeout=5)
    assert time.monotonic() - reloaded < 5

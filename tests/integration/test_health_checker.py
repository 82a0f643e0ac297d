"""health-checker against real backends on 127.0.0.1 ephemeral ports: the probes in-process, then
the real daemon as a subprocess, watched through the state file it writes and the lines it logs."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frontgate import health_state
from frontgate.config import Address, CheckSpec
from health_checker.probes import probe
from tests.helpers import BIN, REPO, daemon_output, free_port, start_daemon, stop_daemon, wait_until

DEMO_APP = REPO / "scripts" / "demo_app.py"


# --------------------------------------------------------------------------- the probes, in-process

async def serve_once(answer: bytes | None, delay: float = 0.0):
    """A one-shot TCP server: records what it receives, answers `answer` (None: says nothing)."""
    received = bytearray()

    async def handle(reader, writer):
        received.extend(await reader.readuntil(b"\r\n\r\n"))
        await asyncio.sleep(delay)
        if answer is not None:
            writer.write(answer)
            await writer.drain()
            writer.close()
        else:
            await asyncio.sleep(5)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


def run_probe(answer: bytes | None, spec: CheckSpec, delay: float = 0.0, host: str = "maps.localhost"):
    async def go():
        server, port, received = await serve_once(answer, delay)
        async with server:
            result = await probe(Address("127.0.0.1", port), spec, host)
        return result, bytes(received)
    return asyncio.run(go())


def test_http_probe_sends_get_with_host_and_judges_the_status():
    result, request = run_probe(b"HTTP/1.1 204 No Content\r\n\r\n", CheckSpec(path="/health?deep=1"))
    assert request.startswith(b"GET /health?deep=1 HTTP/1.1\r\nHost: maps.localhost\r\n")
    assert b"\r\nConnection: close\r\n" in request
    assert result.ok and result.detail == "HTTP 204" and result.took_ms > 0


def test_http_probe_with_a_500():
    result, _ = run_probe(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", CheckSpec())
    assert not result.ok and result.detail == "HTTP 500 (expected 200-399)"


def test_http_probe_with_garbage():
    result, _ = run_probe(b"SSH-2.0-OpenSSH_9.2\r\n", CheckSpec())
    assert not result.ok and result.detail == "bad response: not an HTTP/1.x status line: 'SSH-2.0-OpenSSH_9.2'"


def test_http_probe_closed_without_a_response():
    result, _ = run_probe(b"", CheckSpec())
    assert not result.ok and result.detail == "connection closed without a response"


def test_http_probe_timeout_while_waiting_for_the_response():
    result, _ = run_probe(None, CheckSpec(timeout=0.2))
    assert not result.ok and result.detail == "timeout after 0.2s (waiting for the response)"
    assert 190 <= result.took_ms < 3000


def test_tcp_probe_only_connects():
    result, request = run_probe(None, CheckSpec(type="tcp"))
    assert result.ok and result.detail == "connected" and request == b""


def test_probe_of_a_closed_port_is_refused():
    result = asyncio.run(probe(Address("127.0.0.1", free_port()), CheckSpec(), "x"))
    assert not result.ok and result.detail == "connection refused"


# --------------------------------------------------------------------------- the daemon

class Backends:
    """Demo app subprocesses, by port; can be killed and brought back on the same port."""

    def __init__(self):
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, port: int, name: str = "app") -> int:
        self.procs[port] = start_daemon([str(BIN / "python"), str(DEMO_APP), "--name", name, "--port", str(port),
                                         "--quiet"], wait_for=("127.0.0.1", port))
        return port

    def kill(self, port: int) -> None:
        stop_daemon(self.procs.pop(port))

    def stop_all(self) -> None:
        for port in list(self.procs):
            self.kill(port)


class CheckerRun:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.state_file = tmp_path / "state" / "health.json"
        self.router_toml = tmp_path / "mux-router.toml"
        self.checker_toml = tmp_path / "health-checker.toml"
        self.proc: subprocess.Popen | None = None

    def write_configs(self, apps: dict[str, list[int]], overrides: str = "", heartbeat: float = 0.5) -> None:
        app_tables = "".join(f'\n[[app]]\nname = "{name}"\nhosts = ["*.{name}.localhost", "{name}.localhost"]\n'
                             f'servers = [{", ".join(f"{chr(34)}127.0.0.1:{p}{chr(34)}" for p in ports)}]\n'
                             for name, ports in apps.items())
        self.router_toml.write_text(f'[router]\nstate_file = "state/health.json"\n'
                                    f'[listen.public]\naddress = "127.0.0.1:{free_port()}"\n{app_tables}')
        self.checker_toml.write_text(f"""
[checker]
router_config = "mux-router.toml"
heartbeat = {heartbeat}
[defaults]
type = "http"
interval = 0.2
timeout = 1
rise = 2
fall = 3
{overrides}
""")

    def start(self) -> None:
        self.proc = start_daemon(["health-checker", "--config", str(self.checker_toml)])
        wait_until(self.state, timeout=10, what="the first state file")

    def state(self) -> health_state.HealthState | None:
        try:
            return health_state.read(self.state_file)
        except FileNotFoundError:
            return None

    def server(self, key: str) -> health_state.ServerState | None:
        state = self.state()
        return state.servers.get(key) if state else None

    def wait_for(self, key: str, wanted: str, timeout: float = 10.0) -> health_state.ServerState:
        return wait_until(lambda: (s := self.server(key)) is not None and s.state == wanted and s,
                          timeout=timeout, what=f"{key} {wanted}")

    def output(self) -> str:
        return daemon_output(self.proc)


@pytest.fixture
def backends():
    b = Backends()
    yield b
    b.stop_all()


@pytest.fixture
def checker(tmp_path):
    run = CheckerRun(tmp_path)
    yield run
    if run.proc is not None:
        out = stop_daemon(run.proc)
        assert "Traceback" not in out, out


def test_each_kind_of_server_gets_its_state_and_the_file_has_a_heartbeat(checker, backends):
    live = backends.start(free_port())
    silent = socket.socket()          # accepts connections (the kernel does), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(128)
    silent_port = silent.getsockname()[1]
    closed = free_port()
    checker.write_configs(
        {"web": [live], "broken": [live], "plain": [live], "silent": [silent_port], "gone": [closed]},
        overrides='[app.broken]\npath = "/status/500"\n[app.plain]\ntype = "tcp"\npath = "/status/500"\n'
                  '[app.silent]\ntimeout = 0.3\n')
    try:
        checker.start()
        up = checker.wait_for(f"web/127.0.0.1:{live}", "up")
        assert up.last_check == {"ok": True, "took_ms": up.last_check["took_ms"], "detail": "HTTP 200"}
        broken = checker.wait_for(f"broken/127.0.0.1:{live}", "down")
        assert broken.last_check["detail"] == "HTTP 500 (expected 200-399)"
        assert checker.wait_for(f"plain/127.0.0.1:{live}", "up").last_check["detail"] == "connected"
        assert (checker.wait_for(f"silent/127.0.0.1:{silent_port}", "down").last_check["detail"]
                == "timeout after 0.3s (waiting for the response)")
        assert checker.wait_for(f"gone/127.0.0.1:{closed}", "down").last_check["detail"] == "connection refused"

        # Nothing changes now, yet the file keeps being rewritten (heartbeat 0.5 s), generation growing.
        first = checker.state()
        time.sleep(1.6)
        later = checker.state()
        assert later.generation >= first.generation + 2
        assert time.time() - later.written_at < 1.5
        assert later.checker_pid == checker.proc.pid
        assert {k: s.state for k, s in later.servers.items()} == {k: s.state for k, s in first.servers.items()}
    finally:
        silent.close()
    log = checker.output()
    assert f"broken/127.0.0.1:{live} is DOWN: HTTP 500 (expected 200-399)" in log
    assert f"gone/127.0.0.1:{closed} is DOWN: connection refused" in log


def test_killed_server_goes_down_after_fall_failures_and_comes_back_after_rise(checker, backends):
    steady, flaky = backends.start(free_port()), backends.start(free_port())
    steady_key, flaky_key = f"web/127.0.0.1:{steady}", f"web/127.0.0.1:{flaky}"
    checker.write_configs({"web": [steady, flaky]})
    checker.start()
    # Seen up by a check (not just the provisional start): from now on it takes `fall` failures.
    wait_until(lambda: (s := checker.server(flaky_key)) and s.last_check["ok"], what="flaky checked ok")

    backends.kill(flaky)
    killed_at = time.time()
    down = checker.wait_for(flaky_key, "down")
    assert down.last_check["detail"] == "connection refused"
    assert down.since - killed_at >= 2 * 0.2 - 0.05, "three checks 0.2 s apart, not one"
    log = checker.output()
    assert f"{flaky_key} check failed: connection refused, 2/3 UP" in log
    assert f"{flaky_key} check failed: connection refused, 1/3 UP" in log
    assert f"{flaky_key} is DOWN: connection refused (3 failed checks, fall=3)" in log

    backends.start(flaky)
    up = checker.wait_for(flaky_key, "up")
    assert up.last_check["detail"] == "HTTP 200"
    log = checker.output()
    assert f"{flaky_key} check succeeded: HTTP 200, 1/2 DOWN" in log
    assert f"{flaky_key} is UP: HTTP 200 (2 successful checks, rise=2)" in log
    # The steady server was never touched: never logged as anything but up.
    assert f"{steady_key} is DOWN" not in log and f"{steady_key} check failed" not in log
    assert checker.server(steady_key).state == "up"


def test_an_http_500_backend_goes_down_and_back_up_when_the_check_changes(checker, backends):
    port = backends.start(free_port())
    key = f"web/127.0.0.1:{port}"
    checker.write_configs({"web": [port]}, overrides='[app.web]\npath = "/status/500"\n')
    checker.start()
    assert checker.wait_for(key, "down").last_check["detail"] == "HTTP 500 (expected 200-399)"
    # The operator fixes the check; SIGHUP reloads it; the server keeps its state and rises.
    checker.write_configs({"web": [port]}, overrides='[app.web]\npath = "/status/200"\n')
    checker.proc.send_signal(signal.SIGHUP)
    assert checker.wait_for(key, "up").last_check["detail"] == "HTTP 200"
    assert f"{key} is UP: HTTP 200 (2 successful checks, rise=2)" in checker.output()


def test_sighup_adds_and_removes_servers_and_keeps_the_old_config_on_error(checker, backends):
    a, b = backends.start(free_port()), backends.start(free_port())
    checker.write_configs({"web": [a]})
    checker.start()
    checker.wait_for(f"web/127.0.0.1:{a}", "up")

    checker.write_configs({"maps": [b]})
    checker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: set(checker.state().servers) == {f"maps/127.0.0.1:{b}"}, what="the new server list")
    assert "(1 added, 1 removed)" in checker.output()

    checker.checker_toml.write_text(checker.checker_toml.read_text() + "\nbogus = 1\n")
    checker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed, keeping the running config" in checker.output(), what="reload refused")
    assert "health-checker.toml: defaults.bogus: unknown key" in checker.output()
    generation = checker.state().generation
    wait_until(lambda: checker.state().generation > generation + 1, what="still writing after a failed reload")
    assert checker.proc.poll() is None
    assert set(checker.state().servers) == {f"maps/127.0.0.1:{b}"}


def test_sigterm_stops_it_cleanly(checker, backends):
    checker.write_configs({"web": [backends.start(free_port())]})
    checker.start()
    checker.proc.send_signal(signal.SIGTERM)
    assert checker.proc.wait(5) == 0
    assert checker.output().rstrip().endswith("INFO stopped")


def test_generation_carries_on_across_restarts(checker, backends):
    checker.write_configs({"web": [backends.start(free_port())]})
    checker.start()
    wait_until(lambda: checker.state().generation >= 3, what="a few writes")
    stop_daemon(checker.proc)
    before = checker.state().generation
    checker.start()
    wait_until(lambda: checker.state().checker_pid == checker.proc.pid, what="the new checker's first write")
    assert checker.state().generation > before


def test_a_config_error_is_one_line_and_exit_status_2(tmp_path):
    (tmp_path / "health-checker.toml").write_text('[checker]\nrouter_config = "nope.toml"\n')
    r = subprocess.run([str(BIN / "health-checker"), "--config", str(tmp_path / "health-checker.toml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "checker.router_config: cannot load" in r.stderr, r.stderr


def test_runs_with_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "health_checker", "--help"], capture_output=True, text=True,
                       timeout=30, cwd=REPO)
    assert r.returncode == 0 and "--config" in r.stdout

"""Several router workers on one unix socket: the socket is bound once and passed to each worker as
its stdin (what supervisord's fcgi-program does; `make deploy` renders the router so when its
terminator listener is a unix socket). Real router processes, real unix sockets."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess

import pytest

from frontgate import proxy_protocol
from tests.helpers import BIN, daemon_output, start_daemon, stop_daemon, wait_until
from tests.pipeline import RecordingBackend


def router_toml(backend_port: int, workers: int) -> str:
    # The address is relative: from the TOML file's directory, like every path in it.
    return f"""
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
workers = {workers}
state_file = "health.json"
[listen.from_terminator]
address = "unix:run/router.sock"
proxy_protocol = true
scheme = "https"
sni_host_check = false
[[app]]
name = "maps"
hosts = ["maps.localhost"]
servers = ["127.0.0.1:{backend_port}"]
"""


def get_through(path, client_ip: str) -> bytes:
    """One request as the terminator sends it: a PROXY v2 header, then the plaintext."""
    header = proxy_protocol.encode(proxy_protocol.ProxyHeader(family="TCP4", src=(client_ip, 40000),
                                                              dst=("127.0.0.1", 443)))
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(header + b"GET /shared HTTP/1.1\r\nHost: maps.localhost\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def served_by(proc) -> int:
    """Requests in the worker's access log."""
    return len(re.findall(r'"GET /shared HTTP/1.1"', daemon_output(proc)))


@pytest.fixture
def backend():
    b = RecordingBackend().start()
    yield b
    b.stop()


def test_router_workers_share_the_unix_socket_they_are_given(tmp_path, backend):
    (tmp_path / "run").mkdir()
    config = tmp_path / "mux-router.toml"
    config.write_text(router_toml(backend.port, workers=2))
    path = tmp_path / "run" / "router.sock"
    shared = socket.socket(socket.AF_UNIX)
    shared.bind(str(path))
    shared.listen(128)
    procs = []
    try:
        with shared:            # as supervisord would, but the test lets go of it: the workers hold it
            for _ in range(2):
                procs.append(start_daemon(["mux-router", "--config", str(config)], stdin=shared.fileno()))
        for proc in procs:
            wait_until(lambda: f"listening on unix:{path}" in daemon_output(proc), what="worker listening")

        # Both workers take connections from the one socket. Which one the kernel wakes is its
        # business (one can win every race), so each is shown alone: the other is stopped (SIGSTOP)
        # while 30 clients come, and those queue in the shared backlog for the one that runs.
        for turn, (serving, stopped) in enumerate(((procs[0], procs[1]), (procs[1], procs[0]))):
            before = served_by(serving)
            os.kill(stopped.pid, signal.SIGSTOP)
            try:
                answers = [get_through(path, f"198.51.100.{30 * turn + i}") for i in range(1, 31)]
            finally:
                os.kill(stopped.pid, signal.SIGCONT)
            assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers[0]
            wait_until(lambda: served_by(serving) == before + 30, what="the running worker served all 30")
        # The client address came from the PROXY header, through either worker.
        assert sum(b"X-Forwarded-For: 198.51.100." in r for r in backend.snapshot()) == 60

        # One worker stops: the socket is not its to remove, and the other one serves on.
        out = stop_daemon(procs.pop(0))
        assert "Traceback" not in out and path.is_socket()
        before = served_by(procs[0])
        assert all(get_through(path, "198.51.100.99").startswith(b"HTTP/1.1 200 ") for _ in range(10))
        wait_until(lambda: served_by(procs[0]) == before + 10, what="the remaining worker served all")
        stop_daemon(procs.pop())
        assert path.is_socket()
    finally:
        for proc in procs:
            stop_daemon(proc)


def test_workers_do_not_bind_a_unix_socket_each_for_themselves(tmp_path, backend):
    """With workers > 1 and no socket handed in, a worker that bound the path itself would take it
    from the worker that bound it first (a unix path has no SO_REUSEPORT): it refuses to start."""
    (tmp_path / "run").mkdir()
    config = tmp_path / "mux-router.toml"
    config.write_text(router_toml(backend.port, workers=2))
    r = subprocess.run([str(BIN / "mux-router"), "--config", str(config)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"unix:{tmp_path / 'run' / 'router.sock'} is shared by 2 workers only as a socket supervisord passes them" \
        in r.stderr, r.stderr
    assert not (tmp_path / "run" / "router.sock").exists()

    # One worker binds it itself, as before (and a socket for another path on stdin is not taken).
    config.write_text(router_toml(backend.port, workers=1))
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(tmp_path / "other.sock"))
    other.listen(1)
    with other:
        proc = start_daemon(["mux-router", "--config", str(config)], stdin=other.fileno())
    try:
        wait_until(lambda: (tmp_path / "run" / "router.sock").is_socket(), what="the router's own socket")
        assert get_through(tmp_path / "run" / "router.sock", "198.51.100.7").startswith(b"HTTP/1.1 200 ")
    finally:
        stop_daemon(proc)
    assert not (tmp_path / "run" / "router.sock").exists()     # its own: removed on exit
    os.unlink(tmp_path / "other.sock")

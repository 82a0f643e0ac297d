"""What the dynamic-route tests share: named HTTP backends, routers on a given loopback address
with a [routes] table, and plain HTTP/1.1 requests through them."""
from __future__ import annotations

import http.client
import os
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import BIN, REPO, free_port, start_daemon, stop_daemon

ROUTER_TOML = """
[router]
access_log_file = "-"
state_file = "state/health.json"
state_stale_after = 60
[listen.public]
address = "{ip}:{port}"
[timeouts]
http_request = 2
connect = 2
server = 5
[routes]
store = "{store}"
file = "state/routes.json"
poll_interval = {poll}
node = "{node}"
{extra}
[[app]]
name = "static"
hosts = ["static.example.net"]
servers = ["{static}"]
"""


class NamedBackend:
    """An HTTP backend in a thread that answers every request with its name (and the path)."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0):
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = f"{backend.name} {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.name = name
        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class RouterNode:
    """mux-router on `ip`, its config in `directory/configs/mux-router.toml`, its table in
    `directory/configs/state/routes.json`."""

    def __init__(self, directory: Path, ip: str, static: str, store: str = "file", poll: float = 2.0,
                 node: str = "", extra: str = ""):
        self.dir = directory
        self.ip, self.port = ip, free_port(ip)
        self.configs = directory / "configs"
        (self.configs / "state").mkdir(parents=True, exist_ok=True)
        self.config = self.configs / "mux-router.toml"
        self.config.write_text(ROUTER_TOML.format(ip=ip, port=self.port, store=store, poll=poll,
                                                  node=node or ip, static=static, extra=extra))
        self.table = self.configs / "state" / "routes.json"
        self.proc = None

    def start(self):
        self.proc = start_daemon(["mux-router", "--config", str(self.config)], wait_for=(self.ip, self.port))
        return self

    def stop(self) -> str:
        return stop_daemon(self.proc) if self.proc is not None else ""

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def serves(self, host: str, path: str, name: str) -> bool:
        status, body = self.get(host, path)
        return status == 200 and body.startswith(name + " ")


def frontgate(configs: Path, *args: str, user: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """`frontgate route ...` (as `user` through runuser when given)."""
    command = [*args[:1], "--configs", str(configs), *args[1:]]
    if user is None:
        return subprocess.run([str(BIN / "frontgate"), *command], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
    return subprocess.run(["runuser", "-u", user, "--", *as_other_user(), *command], capture_output=True,
                          text=True, timeout=timeout, cwd="/")


def as_other_user() -> list[str]:
    """The frontgate CLI as another user can run it: the venv's interpreter may live where only root
    can read (a pyenv under /root); then the system's Python of the same version, with the checkout
    and the venv's site-packages on its path."""
    if os.access(os.path.realpath(sys.executable), os.X_OK, effective_ids=False) and _others_may_run(sys.executable):
        return [sys.executable, "-m", "frontgate_ops.cli"]
    site = next(Path(sys.prefix).glob("lib/python*/site-packages"))
    return ["env", f"PYTHONPATH={REPO}:{site}", f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
            "-m", "frontgate_ops.cli"]


def _others_may_run(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(p.stat().st_mode & 0o001 for p in [real, *real.parents])


def route_sync(configs: Path):
    return start_daemon([str(BIN / "frontgate"), "route", "--configs", str(configs), "sync"])


@pytest.fixture
def backends():
    """Four named backends: static (the static app's), blog, api, other."""
    made = {name: NamedBackend(name) for name in ("static", "blog", "api", "other")}
    yield made
    for b in made.values():
        b.close()

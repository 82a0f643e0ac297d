"""The pipeline under the real supervisord, as `make deploy` runs it, but in a temporary directory on
ephemeral 127.0.0.1 ports: configs/ with the three TOMLs, supervisord.conf generated from the
repository's supervisord.conf.in by `frontgate supervisord-conf`, the demo apps on free ports.
Used by the ops tests (reload, rolling restart, status) and the zero-drop load test."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import trustme

from frontgate_ops.deploy import Supervisor
from tests.helpers import BIN, REPO, free_port, wait_until


class Supervised:
    def __init__(self, root: Path, router_workers: int = 2, terminator_workers: int = 2, router_link: str = "unix"):
        self.root = root
        self.configs = root / "configs"
        self.tls_port, self.router_port, self.public_port = free_port(), free_port(), free_port()
        # Terminator to router: the shipped unix socket (supervisord holds it, an fcgi-program) or TCP.
        self.router_socket = root / "run" / "router.sock"
        self.router_address = ("unix:../run/router.sock" if router_link == "unix"
                               else f"127.0.0.1:{self.router_port}")
        self.maps_port, self.coltrane_port = free_port(), free_port()
        self.router_workers, self.terminator_workers = router_workers, terminator_workers
        self.ca = trustme.CA()
        self.conf = root / "supervisord.conf"
        self.extra_hosts: list[str] = []

    # ---- files

    def router_toml(self) -> str:
        hosts = ", ".join(f'"{h}"' for h in ["maps.localhost", *self.extra_hosts])
        return f"""
[router]
workers = {self.router_workers}
state_file = "../state/health.json"
state_stale_after = 5
[listen.public]
address = "127.0.0.1:{self.public_port}"
[listen.from_terminator]
address = "{self.router_address}"
proxy_protocol = true
scheme = "https"
[[app]]
name = "maps"
hosts = [{hosts}]
servers = ["127.0.0.1:{self.maps_port}"]
[[app]]
name = "coltrane"
hosts = ["coltrane.localhost"]
servers = ["127.0.0.1:{self.coltrane_port}"]
"""

    def write_files(self) -> None:
        for d in ("configs", "certs", "logs", "run", "state", "scripts"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / ".venv").symlink_to(REPO / ".venv")
        (self.root / "scripts" / "demo_app.py").symlink_to(REPO / "scripts" / "demo_app.py")
        # The demo apps' ports are fixed in the template (they are not frontgate's config).
        template = (REPO / "supervisord.conf.in").read_text()
        template = template.replace("--port 8000", f"--port {self.coltrane_port}").replace(
            "--port 3000", f"--port {self.maps_port}")
        (self.root / "supervisord.conf.in").write_text(template)
        pem = self.root / "certs" / "site.pem"
        self.ca.issue_cert("maps.localhost", "coltrane.localhost", "karten.localhost").\
            private_key_and_cert_chain_pem.write_to_path(str(pem))
        pem.chmod(0o600)
        (self.configs / "mux-router.toml").write_text(self.router_toml())
        (self.configs / "tls-terminator.toml").write_text(f"""
[terminator]
listen = "127.0.0.1:{self.tls_port}"
forward_to = "{self.router_address}"
workers = {self.terminator_workers}
[[certificate]]
cert = "../certs/site.pem"
""")
        (self.configs / "health-checker.toml").write_text("""
[checker]
router_config = "mux-router.toml"
heartbeat = 1
[defaults]
interval = 0.5
rise = 1
""")
        # cert-manager with no names (no app is marked acme = true): it idles, orders nothing from
        # anyone, and follows the router's file like the checker.
        (self.configs / "cert-manager.toml").write_text('[cert_manager]\nrouter_config = "mux-router.toml"\n')

    # ---- lifecycle

    def frontgate(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "frontgate"), *args], cwd=self.root, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> None:
        self.write_files()
        r = self.frontgate("supervisord-conf")
        assert r.returncode == 0, r.stderr
        r = self.frontgate("deployed", "record")
        assert r.returncode == 0, r.stderr
        subprocess.run([str(BIN / "supervisord"), "-c", str(self.conf)], check=True, timeout=30)
        self.supervisor = Supervisor(self.conf)
        wait_until(lambda: all(p.state == "RUNNING" for p in self.supervisor.processes())
                   and len(self.supervisor.processes()) == 4 + self.router_workers + self.terminator_workers,
                   timeout=30, interval=0.2, what="every program RUNNING")
        wait_until(lambda: self.get("maps.localhost")[0] == 200, timeout=15, what="traffic through the pipeline")

    def stop(self) -> None:
        try:
            pid = int((self.root / "run" / "supervisord.pid").read_text())
        except (FileNotFoundError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        def gone():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        wait_until(gone, timeout=40, interval=0.2, what="supervisord stopped")

    def pids(self, group: str) -> list[int]:
        return [p.pid for p in self.supervisor.processes(group)]

    def log(self, name: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.root / "logs").glob(f"{name}*.log")))

    # ---- clients

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def connect(self, host: str, timeout: float = 10) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=timeout)
        conn.sock = self.client_context().wrap_socket(
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=timeout), server_hostname=host)
        return conn

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        try:
            conn = self.connect(host)
            conn.request("GET", path, headers={"Host": host, "Connection": "close"})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            conn.close()
            return resp.status, body
        except OSError as e:
            return 0, repr(e)

    def status_json(self) -> dict:
        r = self.frontgate("status", "--json")
        return json.loads(r.stdout)


def supervised_pipeline(tmp_path: Path, **kwargs):
    """A generator for fixtures: the running pipeline, stopped (and its logs checked) afterwards."""
    s = Supervised(tmp_path / "fg", **kwargs)
    try:
        s.start()
        yield s
    finally:
        s.stop()

"""router + terminator + cert-manager, pointed at a real Pebble (tests/pebble.py), for the
cert-manager tests: one node, or one node of a fleet (a [routes] table with a Redis store)."""
from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import trustme
from cryptography import x509

from tests.helpers import free_port, start_daemon, stop_daemon
from tests.pebble import Pebble

NAME = "shop.frontgate.test"


class Stack:
    """router + terminator + cert-manager in `root`, cert-manager pointed at `pebble`, the router's
    plain listener on `ip`:`plain_port` (where Pebble's http-01 validation goes). `names`: the
    cert-manager's list (None: the app's host, through `acme = true`); `routes`: a [routes] table
    for the router (a fleet's Redis)."""

    def __init__(self, root: Path, pebble: Pebble, plain_port: int, ip: str = "127.0.0.1",
                 names: list[str] | None = None, routes: str = ""):
        self.root, self.pebble, self.plain_port, self.ip = root, pebble, plain_port, ip
        self.tls_port, self.proxy_port, self.admin_port = free_port(), free_port(), free_port()
        self.configs = root / "configs"
        self.certs = root / "certs" / "live"
        self.challenges = root / "state" / "acme-challenges"
        self.state = root / "state" / "acme"
        self.procs: dict[str, subprocess.Popen] = {}
        for d in (self.configs, self.certs, self.challenges):
            d.mkdir(parents=True, exist_ok=True)
        fallback = trustme.CA().issue_cert("fallback.test")
        fallback.private_key_and_cert_chain_pem.write_to_path(str(self.configs / "fallback.pem"))
        (self.configs / "fallback.pem").chmod(0o600)
        (self.configs / "mux-router.toml").write_text(f"""
[router]
state_file = "../state/health.json"
access_log_file = "-"
acme_challenge_dir = "../state/acme-challenges"
[listen.public]
address = "{ip}:{plain_port}"
[listen.from_terminator]
address = "127.0.0.1:{self.proxy_port}"
proxy_protocol = true
scheme = "https"
[[redirect]]
listener = "public"
to_scheme = "https"
[[app]]
name = "shop"
hosts = ["{NAME}"]
servers = ["127.0.0.1:{free_port()}"]
acme = {"true" if names is None else "false"}
{routes}
""")
        (self.configs / "tls-terminator.toml").write_text(f"""
[terminator]
listen = "{ip}:{self.tls_port}"
forward_to = "127.0.0.1:{self.proxy_port}"
certs_dir = "../certs/live"
certs_poll_interval = 1
[[certificate]]
cert = "fallback.pem"
default = true
""")
        self.write_cert_manager(names)

    def write_cert_manager(self, names: list[str] | None) -> None:
        listed = "" if names is None else f"names = {json.dumps(names)}"
        (self.configs / "cert-manager.toml").write_text(f"""
[cert_manager]
directory_url = "{self.pebble.directory_url}"
contact = ["mailto:ops@frontgate.test"]
ca_bundle = "{self.pebble.ca_pem}"
router_config = "mux-router.toml"
{listed}
retry_min = 1
retry_max = 3
order_timeout = 30
[admin]
address = "127.0.0.1:{self.admin_port}"
""")

    def start(self) -> "Stack":
        self.procs["router"] = start_daemon(["mux-router", "--config", str(self.configs / "mux-router.toml")],
                                            wait_for=(self.ip, self.plain_port))
        self.procs["terminator"] = start_daemon(["tls-terminator", "--config", str(self.configs / "tls-terminator.toml")],
                                                wait_for=(self.ip, self.tls_port))
        self.procs["cert-manager"] = start_daemon(["cert-manager", "--config", str(self.configs / "cert-manager.toml")],
                                                  wait_for=("127.0.0.1", self.admin_port))
        return self

    def stop(self) -> dict[str, str]:
        return {name: stop_daemon(proc) for name, proc in self.procs.items()}

    def cert_file(self, name: str = NAME) -> Path:
        return self.certs / f"{name}.pem"

    def installed_serial(self, name: str = NAME) -> int | None:
        try:
            return x509.load_pem_x509_certificate(self.cert_file(name).read_bytes()).serial_number
        except (OSError, ValueError):
            return None

    def state_doc(self, name: str = NAME) -> dict:
        try:
            return json.loads((self.state / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def s_client(self, root_pem: bytes, name: str = NAME) -> tuple[int | None, str]:
        """(serial of the certificate served for `name`, s_client's verify line) against `root_pem`."""
        ca = self.root / "pebble-root.pem"
        ca.write_bytes(root_pem)
        out = subprocess.run(["openssl", "s_client", "-connect", f"{self.ip}:{self.tls_port}", "-servername", name,
                              "-CAfile", str(ca), "-verify_hostname", name],
                             input="", capture_output=True, text=True, timeout=20).stdout
        verify = re.search(r"Verify return code: .*", out)
        pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
        serial = x509.load_pem_x509_certificate(pem.group(0).encode()).serial_number if pem else None
        return serial, verify.group(0) if verify else out


def metric(text: str, family: str, name: str = NAME) -> float:
    m = re.search(rf"^frontgate_cert_manager_{family}\{{name=\"{re.escape(name)}\"\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0

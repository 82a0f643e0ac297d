"""A real Pebble (Let's Encrypt's test ACME server, Debian package `pebble`) on free 127.0.0.1
ports, for the cert-manager tests. Its names resolve through pebble-challtestsrv (same package)
run as a DNS stub answering 127.0.0.1 for every A query, so http-01 validation comes to the
router's plain listener (`http_port`) and nowhere else. Its ACME API's TLS certificate comes from
a trustme CA (`ca_pem`, cert-manager's ca_bundle); its issuing root from `/roots/0` on its
management port, for the chain checks."""
from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from pathlib import Path

import pytest
import trustme

from tests.helpers import free_port, start_daemon, stop_daemon


def require_pebble() -> None:
    if shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None:
        pytest.skip("Debian package pebble is not installed (the Makefile's `test` installs it)")


class Pebble:
    def __init__(self, root: Path, http_port: int, validity: int | None = None, nonce_reject: int = 5):
        require_pebble()
        self.root = root
        self.http_port = http_port
        self.validity = validity
        self.nonce_reject = nonce_reject
        self.port, self.mgmt_port, self.dns_port, self.dns_mgmt_port = (free_port() for _ in range(4))
        self.ca = trustme.CA()
        self.ca_pem = root / "pebble-ca.pem"
        self.procs: list = []
        self.logs: list[str] = []
        self._write_files()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _write_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(self.root / "pebble-cert.pem"))
        leaf.private_key_pem.write_to_path(str(self.root / "pebble-key.pem"))
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.root / "pebble-cert.pem"), "privateKey": str(self.root / "pebble-key.pem"),
            "httpPort": self.http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        if self.validity is not None:
            config["pebble"]["certificateValidityPeriod"] = self.validity
        (self.root / "pebble.json").write_text(json.dumps(config))

    def start(self) -> "Pebble":
        dns = start_daemon(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                            "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
                            "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_mgmt_port}"],
                           wait_for=("127.0.0.1", self.dns_mgmt_port))
        self.procs.append(dns)
        env = {"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject)}
        self.procs.append(start_daemon(["pebble", "-config", str(self.root / "pebble.json"),
                                        "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                                       wait_for=("127.0.0.1", self.port), env=env))
        return self

    def stop(self) -> None:
        """Both processes gone (Pebble forgets everything: accounts, orders, its CA)."""
        while self.procs:
            self.logs.append(stop_daemon(self.procs.pop()))

    def root_pem(self) -> bytes:
        """The root Pebble issues under now (a new one at every start)."""
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}/roots/0", context=context, timeout=10) as r:
            return r.read()

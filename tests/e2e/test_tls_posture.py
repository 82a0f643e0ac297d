"""The TLS posture out of the box: `make deploy` in a copy of the repository (shipped configs, real
port 443) serves a certificate from the development CA that clients trusting that CA accept, and
sslyze's Mozilla "intermediate" check passes: compliant, no exception.

The CA is trusted the way the README tells operators to, without touching this machine's trust
store: sslyze's --certinfo_ca_file adds it as one more trust store for certificate_path_validation
(the Mozilla check accepts a chain any store verifies), curl gets --cacert, Python's ssl cafile=."""
from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from tests.e2e.test_deploy import deployed, make  # noqa: F401  (deployed: the fixture)
from tests.helpers import sslyze_binary, wait_until

HOST = "maps.localhost"


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--max-time", "5", "--resolve", f"{HOST}:443:127.0.0.1", "-o", "/dev/null",
                           "-w", "%{http_code}", *args, f"https://{HOST}/"], capture_output=True, text=True, timeout=10)


@pytest.mark.skipif(sslyze_binary() is None, reason="sslyze not installed (`make test` installs it, or set SSLYZE)")
@pytest.mark.timeout(600)
def test_a_deploy_is_mozilla_intermediate_compliant_with_the_development_ca_trusted(deployed):  # noqa: F811
    repo, output = deployed
    ca_pem = repo / "certs" / "dev-ca" / "ca.pem"
    assert f"made the development CA {ca_pem}" in output, output
    assert (repo / "certs" / "dev-ca" / "ca.key").stat().st_mode & 0o777 == 0o600

    # Trusted, the chain verifies with no -k; untrusted (this machine's store only), it does not.
    wait_until(lambda: curl("--cacert", str(ca_pem)).stdout == "200", timeout=15, what=f"{HOST} answers over TLS")
    assert curl().returncode == 60            # curl: "peer certificate cannot be authenticated"

    # Python verifies it too (name and chain). The terminator sends the leaf only, never the CA.
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    with socket.create_connection(("127.0.0.1", 443), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        assert tls.version() == "TLSv1.3"
    shown = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:443", "-servername", HOST, "-showcerts",
                            "-CAfile", str(ca_pem)], input="", capture_output=True, text=True, timeout=20).stdout
    assert shown.count("-----BEGIN CERTIFICATE-----") == 1 and "Verify return code: 0 (ok)" in shown, shown

    r = subprocess.run([str(sslyze_binary()), "--mozilla_config=intermediate", f"--certinfo_ca_file={ca_pem}",
                        f"{HOST}:443{{127.0.0.1}}"], capture_output=True, text=True, timeout=540)
    report = r.stdout[r.stdout.find("COMPLIANCE AGAINST TLS CONFIGURATION"):]
    assert r.returncode == 0 and f"{HOST}:443: OK - Compliant." in report, r.stdout[-4000:] + r.stderr[-2000:]
    assert "FAILED" not in report and "ERROR" not in report, report

    # `frontgate certs` shows the CA; a second deploy re-issues nothing.
    certs = make(repo, "certs")
    assert f"{ca_pem}  [development CA" in certs.stdout and "subject: O=frontgate development" in certs.stdout, \
        certs.stdout + certs.stderr
    leaf = (repo / "certs" / "dev.pem").read_bytes()
    again = make(repo, "deploy")
    assert again.returncode == 0 and "made " not in again.stdout, again.stdout + again.stderr
    assert (repo / "certs" / "dev.pem").read_bytes() == leaf

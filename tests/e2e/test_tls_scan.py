"""testssl.sh (Debian package `testssl.sh`) against the running terminator: protocols, ciphers,
server defaults, vulnerabilities. The findings are summarised in the test output; none may be
HIGH or CRITICAL. Skipped when testssl.sh is not installed."""
from __future__ import annotations

import collections
import json
import shutil
import subprocess

import pytest

from tests.pipeline import running_pipeline

pytestmark = pytest.mark.slow
TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
BAD = ("HIGH", "CRITICAL")


@pytest.fixture
def pipeline(tmp_path):
    yield from running_pipeline(tmp_path, cert_days=90)


@pytest.mark.skipif(TESTSSL is None, reason="testssl.sh is not installed (apt-get install -y testssl.sh)")
@pytest.mark.timeout(600)
def test_testssl_finds_nothing_high_or_critical(pipeline, tmp_path):
    report = tmp_path / "testssl.json"
    # --add-ca: the test CA that issued the site certificate, so that the chain is judged as a
    # client trusting it would. --ip: the name is the SNI and Host; the address is loopback.
    argv = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--sneaky", "--jsonfile", str(report),
            "--add-ca", str(tmp_path / "ca.pem"), "--ip", "127.0.0.1", f"maps.localhost:{pipeline.tls_port}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert report.exists(), f"testssl.sh wrote no report (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
    findings = json.loads(report.read_text())
    by_severity = collections.Counter(f["severity"] for f in findings)
    notable = [f for f in findings if f["severity"] in ("LOW", "MEDIUM", *BAD)]
    print(f"\ntestssl.sh: {len(findings)} findings by severity: {dict(by_severity)}")
    for f in notable:
        print(f"  {f['severity']:8} {f['id']}: {f['finding']}")
    bad = [f"{f['severity']} {f['id']}: {f['finding']}" for f in findings
           if f["severity"] in BAD]
    assert not bad, "\n".join(bad)
    # The scan did reach the terminator and negotiated TLS 1.3.
    offered = {f["id"]: f["finding"] for f in findings}
    assert offered.get("TLS1_3", "").startswith("offered"), offered.get("TLS1_3")

"""Keeps the benchmark harness working: `scripts/bench/run --smoke` starts both stacks, drives them
for about a second each and parses the load generators' output. It asserts nothing about speed."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers import REPO

TOOLS = {"wrk": "wrk", "haproxy": "haproxy", "stunnel": "stunnel4", "nginx": "nginx", "ab": "apache2-utils"}
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])   # haproxy, nginx
missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool, path=SEARCH) is None]


@pytest.mark.skipif(bool(missing), reason="benchmark tools not installed: " + ", ".join(missing))
@pytest.mark.timeout(180)
def test_bench_smoke_runs_scenarios_1_and_4(tmp_path):
    done = subprocess.run([str(REPO / "scripts/bench/run"), "--smoke", "--scenarios", "1,4", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = (tmp_path / "results.md").read_text()
    for label in ("frontgate (tls-terminator + mux-router)", "stunnel (seed 004 config) + HAProxy",
                  "mux-router alone (plain HTTP)", "HAProxy alone (plain HTTP)", "uvloop relay, no HTTP work (floor)",
                  "uvloop relay + the router's head parsers (floor)"):
        assert label in results
    assert "Failed measurements" not in results
    varied = [line for line in results.splitlines() if "every request different): " in line]
    assert len(varied) == 1 and varied[0].rsplit(": ", 1)[1][0].isdigit(), varied

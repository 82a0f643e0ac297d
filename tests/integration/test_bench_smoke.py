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
@pytest.mark.slow          # the harness end to end (26 s); make bench BENCH_ARGS="--smoke" runs it too
@pytest.mark.timeout(180)
def test_bench_smoke_runs_scenarios_1_and_4(tmp_path):
    done = subprocess.run([str(REPO / "scripts/bench/run"), "--smoke", "--scenarios", "1,4", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = (tmp_path / "results.md").read_text()
    for label in ("frontgate as shipped (terminator + router, access log on)",
                  "frontgate, access log off (terminator + router)", "stunnel (tuned) + HAProxy",
                  "stunnel (seed 004 config) + HAProxy", "mux-router alone as shipped (plain HTTP, access log on)",
                  "mux-router alone, access log off (plain HTTP)", "HAProxy alone (plain HTTP)",
                  "uvloop relay, no HTTP work (floor)", "uvloop relay + the router's head parsers (floor)"):
        assert label in results
    assert "Failed measurements" not in results
    same = [line for line in results.splitlines() if "the same request again and again): " in line]
    assert len(same) == 4 and all(line.rsplit(": ", 1)[1][0].isdigit() for line in same), same
    # Checked in the shipped router's access log: every varied request it logged was different.
    variety = [line for line in results.splitlines() if line.startswith("- every request different: distinct")]
    assert len(variety) == 2, variety
    for line in variety:
        distinct, logged = line.rsplit(": ", 1)[1].split(" of ")
        assert distinct == logged and int(logged) > 0, line


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_wrk_with_the_varied_script_sends_every_request_different(tmp_path):
    """What the backend receives from wrk running VARIED_REQUESTS: a target and a cookie of its own
    per request, from both of wrk's threads, and the command line's headers kept (scenario 3 sends
    `Connection: close` that way)."""
    import asyncio
    from scripts.bench.scenarios import VARIED_REQUESTS, WRK_THREADS
    from tests.pipeline import ThreadServer
    heads: list[bytes] = []

    async def answer(reader, writer):
        try:
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    script = tmp_path / "varied.lua"
    script.write_text(VARIED_REQUESTS)
    server = ThreadServer(answer).start()
    try:
        subprocess.run(["wrk", "-t", str(WRK_THREADS), "-c", "4", "-d", "1s", "-H", "Host: bench.localhost",
                        "-H", "X-Bench: kept", "-s", str(script), f"http://127.0.0.1:{server.port}/1k.bin"],
                       capture_output=True, timeout=30, check=True)
    finally:
        server.stop()
    requests = []
    for head in heads:
        lines = head.decode().split("\r\n")
        fields = dict(l.split(": ", 1) for l in lines[1:] if l)
        assert (fields["Host"], fields["X-Bench"]) == ("bench.localhost", "kept")
        requests.append((lines[0].split()[1], fields["Cookie"]))
    assert len(requests) > 10
    targets, cookies = zip(*requests)
    assert len(set(targets)) == len(targets) and len(set(cookies)) == len(cookies)
    assert {t.split("?t=")[1].split("&")[0] for t in targets} == {str(i) for i in range(1, WRK_THREADS + 1)}
    assert all(t.startswith("/1k.bin?t=") for t in targets)

"""`make deploy` in a copy of the repository, with the shipped configs and the real ports (80, 443),
under the real supervisord; then what an operator does: curl, wss, restart one stage, redeploy."""
from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import websockets

from tests.helpers import REPO, wait_until

PORTS = (80, 443, 8443, 3000, 8000)
STAGES = ("tls-terminator", "mux-router", "health-checker")


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def deployed(tmp_path):
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        pytest.skip(f"ports {busy} are in use (a running deploy?); this test needs them free")
    repo = tmp_path / "frontgate"
    shutil.copytree(REPO, repo, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "state", "run", "logs", "certs", "__pycache__", ".pytest_cache", ".hypothesis"))
    (repo / ".venv").symlink_to(REPO / ".venv")     # the venv this suite runs in: no reinstall
    try:
        r = make(repo, "deploy")
        assert r.returncode == 0, r.stdout + r.stderr
        yield repo, r.stdout
    finally:
        make(repo, "stop")
        for p in PORTS:
            wait_until(lambda: not port_in_use(p), timeout=20, what=f"port {p} closed after make stop")


def make(repo, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", target], cwd=repo, capture_output=True, text=True, timeout=300)


def supervisorctl(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(repo / ".venv/bin/supervisorctl"), "-c", str(repo / "supervisord.conf"), *args],
                          capture_output=True, text=True, timeout=60)


def pid_of(repo, program: str) -> int:
    return int(supervisorctl(repo, "pid", program).stdout.strip())


def curl_https(host: str) -> tuple[int, str]:
    r = subprocess.run(["curl", "-sk", "--max-time", "5", "--resolve", f"{host}:443:127.0.0.1",
                        f"https://{host}/", "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=10)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def seconds_until_traffic_flows(host: str = "maps.localhost", bound: float = 10.0) -> float:
    start = time.monotonic()
    wait_until(lambda: curl_https(host)[0] == 200, timeout=bound, what="traffic through the pipeline")
    return time.monotonic() - start


def test_make_deploy_serves_the_demo_apps_and_survives_stage_restarts(deployed):
    repo, output = deployed
    assert (repo / "certs" / "dev.pem").exists(), "make deploy made the development certificate"
    status = supervisorctl(repo, "status").stdout
    for program in (*STAGES, "demo:coltrane", "demo:maps"):
        assert program in status and "RUNNING" in status.split(program, 1)[1].splitlines()[0], status

    # The operator's three checks from the README. An app that was still starting when the health
    # checker first probed it is down until it passes `rise` checks (a few seconds): wait for each.
    for app in ("maps", "coltrane"):
        wait_until(lambda: curl_https(f"{app}.localhost")[0] == 200, timeout=15, what=f"{app} answers")
        code, body = curl_https(f"{app}.localhost")
        assert code == 200 and app in body

    async def echo():
        ctx = ssl.create_default_context(cafile=str(repo / "certs" / "dev-ca" / "ca.pem"))   # the development CA
        sock = socket.create_connection(("127.0.0.1", 443))
        async with websockets.connect("wss://maps.localhost/socket", ssl=ctx, sock=sock,
                                      server_hostname="maps.localhost", open_timeout=10) as ws:
            await ws.send("ping through both stages")
            return await asyncio.wait_for(ws.recv(), 10)
    assert asyncio.run(echo()) == "ping through both stages"

    r = subprocess.run(["curl", "-s", "--max-time", "5", "--interface", "127.0.0.2", "-o", "/dev/null",
                        "-w", "%{http_code} %{redirect_url}", "--resolve", "maps.localhost:80:127.0.0.1",
                        "http://maps.localhost/a?b=1"], capture_output=True, text=True, timeout=10)
    assert r.stdout == "301 https://maps.localhost/a?b=1"

    # Each stage restarts alone; the others keep their pids, and traffic flows again within 2 s.
    for stage in STAGES:
        others = {p: pid_of(repo, p) for p in STAGES if p != stage}
        assert supervisorctl(repo, "restart", stage).returncode == 0
        assert seconds_until_traffic_flows() < 2.0
        assert {p: pid_of(repo, p) for p in others} == others

    # Without the health checker, traffic still flows.
    assert supervisorctl(repo, "stop", "health-checker").returncode == 0
    assert curl_https("coltrane.localhost")[0] == 200
    assert supervisorctl(repo, "start", "health-checker").returncode == 0

    # A second deploy with nothing changed restarts nothing.
    pids = {p: pid_of(repo, p) for p in STAGES}
    r = make(repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    for stage in STAGES:
        assert f"{stage}: unchanged" in r.stdout, r.stdout
    assert {p: pid_of(repo, p) for p in STAGES} == pids

    # A changed router config restarts the router (and the checker, which reads the same file) only.
    router_toml = repo / "configs" / "mux-router.toml"
    router_toml.write_text(router_toml.read_text().replace('hosts = ["maps.localhost"]',
                                                           'hosts = ["maps.localhost", "karten.localhost"]'))
    r = make(repo, "deploy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mux-router: config changed, restarted" in r.stdout, r.stdout
    assert "tls-terminator: unchanged" in r.stdout
    assert pid_of(repo, "tls-terminator") == pids["tls-terminator"]
    assert pid_of(repo, "mux-router") != pids["mux-router"]
    wait_until(lambda: curl_https("karten.localhost")[0] == 200, timeout=5, what="the new host routed")

    # `make reload` applies a route change in place: SIGHUP, no process restarted.
    pids = {p: pid_of(repo, p) for p in STAGES}
    router_toml.write_text(router_toml.read_text().replace('"karten.localhost"]', '"karten.localhost", "land.localhost"]'))
    r = make(repo, "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mux-router: config changed, reloaded" in r.stdout and "tls-terminator: unchanged" in r.stdout, r.stdout
    assert curl_https("land.localhost")[0] == 200
    assert {p: pid_of(repo, p) for p in STAGES} == pids
    r = make(repo, "status")
    assert r.returncode == 0 and "mux-router" in r.stdout and "maps/127.0.0.1:3000" in r.stdout, r.stdout + r.stderr

    # A broken config is refused: deploy fails with the one-line reason, the old pipeline keeps serving.
    router_toml.write_text(router_toml.read_text().replace("connect = 5", 'connect = "soon"'))
    pids = {p: pid_of(repo, p) for p in STAGES}
    r = make(repo, "deploy")
    assert r.returncode != 0
    assert "mux-router.toml: timeouts.connect: expected a number, got a string" in r.stderr + r.stdout
    assert {p: pid_of(repo, p) for p in STAGES} == pids
    assert curl_https("karten.localhost")[0] == 200

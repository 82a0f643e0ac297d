"""`make deploy` in a copy of the repository, with the shipped configs and the real ports (80, 443),
under the real supervisord; then what an operator does: curl, wss, restart one stage, redeploy, and
reload and restart the stages under HTTPS load. Run under `flock /tmp/frontgate-deploy.lock`."""
from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import websockets

from frontgate_ops.deploy import Supervisor
from tests.helpers import REPO, wait_until
from tests.load import Load

PORTS = (80, 443, 8443, 3000, 8000, 8404, 8405)
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
    if len(os.sched_getaffinity(0)) < 2:
        # "auto" would be one worker per stage here, and one terminator restarting closes 443.
        for name in ("mux-router.toml", "tls-terminator.toml"):
            toml = repo / "configs" / name
            toml.write_text(toml.read_text().replace('workers = "auto"', "workers = 2"))
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


def pid_of(repo, program: str) -> tuple[int, ...]:
    """The pids of a program's processes (a stage with `workers = "auto"` has several)."""
    group = program.split(":")[0]
    return tuple(p.pid for p in Supervisor(repo / "supervisord.conf").processes(group)
                 if p.name == program.split(":")[-1] or ":" not in program)


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

    # The operator's three checks from the README, at once: `make deploy` returned when the checker
    # had checked every server, and said each app is up.
    assert "maps: up" in output and "coltrane: up" in output, output
    for app in ("maps", "coltrane"):
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
        assert supervisorctl(repo, "restart", f"{stage}:*").returncode == 0
        assert seconds_until_traffic_flows() < 2.0
        assert {p: pid_of(repo, p) for p in others} == others

    # Without the health checker, traffic still flows.
    assert supervisorctl(repo, "stop", "health-checker:*").returncode == 0
    assert curl_https("coltrane.localhost")[0] == 200
    assert supervisorctl(repo, "start", "health-checker:*").returncode == 0

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


class DeployedTerminator:
    """The deploy's port 443, for tests.load.Load: the self-signed dev certificate, not verified."""

    def connect(self, host: str) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", 443, timeout=10)
        conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=10), server_hostname=host)
        return conn


LOAD_SECONDS = 24


def test_reload_and_restarts_under_load_fail_no_request_and_every_command_says_so(deployed):
    """Issue 19's acceptance: HTTPS load through both stages from 2 s after `make deploy`; during
    24 s `make reload` (a comment changed), `make restart-router`, `make restart-terminator`, the
    access log on: no request fails, every command exits 0."""
    repo, output = deployed
    assert "maps: up" in output, output
    time.sleep(2)
    router_toml = repo / "configs" / "mux-router.toml"
    timeline, results = [], []
    started = time.monotonic()

    def run(*target: str) -> None:
        t0 = time.monotonic()
        r = make(repo, *target)
        timeline.append(f"{t0 - started:5.1f}s make {' '.join(target)}: exit {r.returncode} ({time.monotonic() - t0:.1f}s)")
        results.append((target, r))

    pids = {stage: pid_of(repo, stage) for stage in ("mux-router", "tls-terminator")}
    with Load(DeployedTerminator(), fresh=2, keepalive=8) as load:
        time.sleep(2)
        router_toml.write_text(router_toml.read_text() + "\n# a comment: the router and the checker reload\n")
        run("reload")
        time.sleep(2)
        run("restart-router")
        time.sleep(2)
        run("restart-terminator")
        time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
    total = load.ok + sum(load.errors.values())
    print(f"\nload: {total} requests, {load.ok} ok, {sum(load.errors.values())} failed, "
          f"{load.retried} idle keep-alive closes retried")
    for line in timeline:
        print("  " + line)
    for target, r in results:
        assert r.returncode == 0, f"make {target}: {r.stdout}{r.stderr}"
    reload_out = results[0][1].stdout
    assert "mux-router: config changed, reloaded" in reload_out and "health-checker: config changed, reloaded" in reload_out
    assert not load.errors, dict(load.errors)
    assert load.ok > 100
    assert all(a != b for stage in pids for a, b in zip(pids[stage], pid_of(repo, stage))), "every worker restarted"
    # `make status` shows every process running the config on disk.
    status = make(repo, "status")
    assert status.returncode == 0 and "(OLD)" not in status.stdout, status.stdout + status.stderr
    # The access log has the requests; the router's own log has its events, and no access line.
    access = (repo / "logs" / "access.log").read_text()
    assert access.count('"GET /keepalive/') > 100
    events = "".join(log.read_text() for log in (repo / "logs").glob("mux-router*.log"))
    assert "reloaded" in events and not re.search(r'"GET /(keepalive|fresh)/', events)

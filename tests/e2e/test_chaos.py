"""Chaos under load: the whole pipeline under a generated supervisord (ephemeral ports, a temporary
directory; never 80/443), a bounded load of POSTs with random bodies through TLS, and `kill -9` of
each stage in turn while it runs.

What is measured and asserted:
- seconds from each kill until traffic flows again (supervisord restarts the stage): printed, a
  warning above the 2 s target (measured 1.6-2.2 s for the terminator, 0.9-1.6 s for the router,
  including supervisord's reaction and the Python start-up), a failure above 5 s;
- every 200 carries the right answer: the demo app echoes the request target and the SHA-256 of the
  body it received, so a corrupted or crossed request is caught;
- requests fail only inside an outage (from the kill to the recovery): a failure outside one is a
  request lost although every stage was up;
- killing the health checker loses nothing at all;
- killing one backend server: requests in flight on it fail cleanly (a 502, never a reset or a
  wrong answer), new ones go to the other server at once (retries), the checker marks it down,
  and once it is started again it is marked up and gets traffic.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import ssl
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass

import pytest

from frontgate import health_state
from tests.helpers import BIN, REPO, start_daemon, stop_daemon, wait_until
from tests.pipeline import Pipeline, check_no_tracebacks

pytestmark = pytest.mark.slow
HOST = "chaos.localhost"
RECOVERY_TARGET = 2.0      # the goal; supervisord's restart plus a Python start-up is close to it
RECOVERY_BOUND = 5.0       # what fails the test


def supervisord_conf(p: Pipeline) -> str:
    def program(name: str, command: str, autorestart: bool = True) -> str:
        return f"""
[program:{name}]
command = {command}
directory = {p.dir}
autorestart = {str(autorestart).lower()}
startsecs = 1
startretries = 100
stopsignal = TERM
stopwaitsecs = 10
stopasgroup = true
killasgroup = true
redirect_stderr = true
stdout_logfile = {p.dir}/logs/{name}.log
"""
    demo = f"{BIN}/python {REPO}/scripts/demo_app.py"
    return f"""
[unix_http_server]
file = {p.dir}/supervisor.sock
chmod = 0700
[supervisord]
nodaemon = true
logfile = {p.dir}/logs/supervisord.log
pidfile = {p.dir}/supervisord.pid
directory = {p.dir}
childlogdir = {p.dir}/logs
environment = PYTHONUNBUFFERED="1"
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl = unix://{p.dir}/supervisor.sock
""" + "".join([
        program("maps-a", f"{demo} --name maps --port {p.maps_ports[0]} --quiet"),
        # maps-b stays down once killed, so that the checker has to notice.
        program("maps-b", f"{demo} --name maps --port {p.maps_ports[1]} --quiet", autorestart=False),
        program("coltrane", f"{demo} --name coltrane --port {p.coltrane_port} --quiet"),
        program("health-checker", f"{BIN}/health-checker --config {p.dir}/health-checker.toml"),
        program("mux-router", f"{BIN}/mux-router --config {p.dir}/mux-router.toml"),
        program("tls-terminator", f"{BIN}/tls-terminator --config {p.dir}/tls-terminator.toml"),
    ])


class Supervised:
    def __init__(self, p: Pipeline):
        self.p = p
        self.conf = p.dir / "supervisord.conf"

    def ctl(self, *args: str) -> str:
        return subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=30).stdout

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).strip() or 0)

    def logs(self) -> str:
        return "".join(f"--- {f.name}\n{f.read_text(errors='replace')}" for f in sorted((self.p.dir / "logs").glob("*.log")))


@pytest.fixture
def supervised(tmp_path):
    p = Pipeline(tmp_path, extra_names=(HOST,))
    # retries = 2: a request whose server refuses the connection goes to the other one.
    p.apps_first = f"""
[[app]]
name = "chaos"
hosts = ["{HOST}"]
retries = 2
servers = ["127.0.0.1:{p.maps_ports[0]}", "127.0.0.1:{p.maps_ports[1]}"]
"""
    p.write_configs()
    (tmp_path / "logs").mkdir()
    s = Supervised(p)
    s.conf.write_text(supervisord_conf(p))
    sup = start_daemon([str(BIN / "supervisord"), "-c", str(s.conf)], cwd=tmp_path)
    try:
        wait_until(lambda: "RUNNING" in s.ctl("status", "tls-terminator") and p.state_file.exists(), timeout=20,
                   what="supervisord started the pipeline")
        wait_until(lambda: probe(p), timeout=10, what="first request through the pipeline")
        yield s
    finally:
        stop_daemon(sup, timeout=30)
    check_no_tracebacks(s.logs())


# --------------------------------------------------------------------------- clients

@dataclass
class Result:
    started: float
    ended: float
    outcome: str        # "ok", "http-NNN", "error:<kind>", "CORRUPT:<why>"


def request(p: Pipeline, path: str, body: bytes, timeout: float = 5.0) -> str:
    try:
        with p.tls_socket(HOST, timeout=timeout) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
                      f"Connection: close\r\n\r\n".encode() + body)
            data = b""
            while len(data) < 1_000_000:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ssl.SSLError) as e:
        return f"error:{type(e).__name__}"
    head, sep, content = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    if not m or not sep:
        return "error:no-response" if not data else f"CORRUPT:malformed response {data[:80]!r}"
    status = int(m.group(1))
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    if length and int(length.group(1)) != len(content):
        return f"CORRUPT:content-length {length.group(1)!r} but {len(content)} bytes"
    if status != 200:
        return f"http-{status}"
    text = content.decode(errors="replace")
    expected = f"request body: {len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}"
    if expected not in text or f"target: {path}" not in text:
        return f"CORRUPT:answer does not match the request {path}"
    return "ok"


def probe(p: Pipeline) -> bool:
    return request(p, "/probe", b"p", timeout=1.0) == "ok"


class Load:
    """`workers` threads sending requests back to back until stopped (bounded by `max_time`)."""

    def __init__(self, p: Pipeline, workers: int = 4, max_time: float = 90.0):
        self.p, self.results, self.lock = p, [], threading.Lock()
        self.stop_at = time.monotonic() + max_time
        self._stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, worker: int) -> None:
        rng = random.Random(worker)
        n = 0
        while not self._stopped.is_set() and time.monotonic() < self.stop_at:
            n += 1
            body = rng.randbytes(rng.randint(1, 64 * 1024))
            t0 = time.monotonic()
            outcome = self.request(f"/chaos/{worker}/{n}", body)
            with self.lock:
                self.results.append(Result(t0, time.monotonic(), outcome))

    def request(self, path: str, body: bytes) -> str:
        return request(self.p, path, body)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stopped.set()
        for t in self.threads:
            t.join(10)


def kill_and_time_recovery(s: Supervised, program: str, bound: float = 15.0) -> tuple[float, float, float]:
    """kill -9 `program`; (time of the kill, seconds until a request gets through, seconds until
    supervisord reports a new pid)."""
    old = s.pid(program)
    assert old > 0, s.ctl("status")
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    flowing, outcomes = None, []
    while time.monotonic() - killed_at < bound:
        outcomes.append(request(s.p, "/probe", b"p", timeout=1.0))
        if outcomes[-1] == "ok":
            flowing = time.monotonic() - killed_at
            break
        time.sleep(0.02)
    print(f"\nkill -9 {program}: probes {outcomes[:3]}...{outcomes[-2:]} ({len(outcomes)})")
    assert flowing is not None, f"no traffic {bound}s after killing {program}:\n{s.logs()[-5000:]}"
    wait_until(lambda: s.pid(program) not in (0, old), timeout=bound, what=f"supervisord restarted {program}")
    return killed_at, flowing, time.monotonic() - killed_at


def test_kill_each_stage_under_load(supervised):
    s = supervised
    outages: list[tuple[str, float, float]] = []
    recovery: dict[str, float] = {}
    with Load(s.p) as load:
        time.sleep(1.5)
        for program in ("tls-terminator", "mux-router", "health-checker", "maps-a"):
            killed_at, flowing, _ = kill_and_time_recovery(s, program)
            recovery[program] = flowing
            outages.append((program, killed_at, killed_at + flowing))
            time.sleep(1.5)     # steady state between kills
    results = load.results
    print(f"\nchaos: {len(results)} requests; seconds until traffic flowed again: "
          + ", ".join(f"{k} {v:.2f}" for k, v in recovery.items()))

    corrupt = [r for r in results if r.outcome.startswith("CORRUPT")]
    assert not corrupt, corrupt[:10]
    ok = [r for r in results if r.outcome == "ok"]
    assert len(ok) > 100, f"only {len(ok)} requests succeeded"

    def in_outage(r: Result) -> str | None:
        for program, start, end in outages:
            if r.ended >= start and r.started <= end + 0.2:
                return program
        return None

    failed = [(r, in_outage(r)) for r in results if r.outcome != "ok"]
    lost = [(round(r.started, 2), r.outcome) for r, program in failed if program is None]
    assert not lost, f"requests failed while every stage was up: {lost[:20]}"
    # The checker is off the request path: killing it costs nothing.
    assert not [r for r, program in failed if program == "health-checker"]
    # A killed backend server: requests in flight on it get a clean 502, others are redispatched.
    backend_failures = {r.outcome for r, program in failed if program == "maps-a"}
    assert backend_failures <= {"http-502"}, backend_failures
    slow = {k: round(v, 2) for k, v in recovery.items() if v >= RECOVERY_TARGET}
    if slow:
        warnings.warn(f"recovery over the {RECOVERY_TARGET}s target after kill -9 of: {slow}")
    assert max(recovery.values()) < RECOVERY_BOUND, recovery


def test_killed_backend_server_is_redispatched_marked_down_and_back(supervised):
    s = supervised
    key = f"chaos/127.0.0.1:{s.p.maps_ports[1]}"
    with Load(s.p) as load:
        time.sleep(1.0)
        pid = s.pid("maps-b")           # asks supervisorctl: can take a while, so before the clock starts
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)    # autorestart is off for maps-b
        wait_until(lambda: health_state.read(s.p.state_file).servers[key].state == "down", timeout=10,
                   what="checker marks the killed server down")
        marked_down = time.monotonic() - killed_at
        time.sleep(1.0)
        assert "RUNNING" in s.ctl("start", "maps-b") or "RUNNING" in s.ctl("status", "maps-b")
        wait_until(lambda: health_state.read(s.p.state_file).servers[key].state == "up", timeout=10,
                   what="checker marks the restarted server up")
        time.sleep(1.0)
    print(f"\nbackend kill: marked down after {marked_down:.2f}s; {len(load.results)} requests")
    failures = [r for r in load.results if r.outcome != "ok"]
    # Only requests in flight at the kill may fail, and only as a 502.
    assert all(r.outcome == "http-502" and r.started <= killed_at + 0.05 for r in failures), \
        [(round(r.started - killed_at, 3), r.outcome) for r in failures]
    assert len(failures) <= 4      # at most one in flight per load worker
    assert len([r for r in load.results if r.outcome == "ok"]) > 50

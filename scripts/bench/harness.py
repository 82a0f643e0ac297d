"""One benchmark run: its work dir, certificates, backends, and the stacks under test.

The backends (nginx, the WebSocket echo server, the sleeping backends) live for the whole run.
The stacks under test are started fresh for every measurement and stopped after it, so that no
measurement inherits another's state: connections stunnel is still closing (its TIMEOUTclose), a
Python heap grown by the previous scenario, warm session caches. Starting costs about a second.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from scripts.bench import certs, configs
from scripts.bench.procs import Processes, free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class System:
    key: str
    label: str
    short: str                    # for the chart
    tls: bool                     # reached over HTTPS (terminator / stunnel) or plain HTTP (router / HAProxy)
    frontgate: bool               # frontgate's side of the comparison
    diagnostic: bool = False      # a measuring stick beside the comparison (the relay floors), not a rival


FRONTGATE = System("frontgate", "frontgate (tls-terminator + mux-router)", "frontgate", tls=True, frontgate=True)
REF_SEED = System("ref_seed", "stunnel (seed 004 config) + HAProxy", "stunnel(seed)+HAProxy", tls=True,
                  frontgate=False)
REF_CLOSE0 = System("ref_close0", "stunnel (TIMEOUTclose = 0) + HAProxy", "stunnel(TIMEOUTclose=0)+HAProxy",
                    tls=True, frontgate=False)
ROUTER = System("router", "mux-router alone (plain HTTP)", "mux-router", tls=False, frontgate=True)
HAPROXY = System("haproxy", "HAProxy alone (plain HTTP)", "HAProxy", tls=False, frontgate=False)
DIRECT = System("direct", "direct to one backend (plain HTTP)", "one backend direct", tls=False, frontgate=False)
# Scenario 4's floors (scripts/bench/floor.py): what Python, uvloop and the sockets cost without
# the router's HTTP work, and with only its two head parsers.
FLOOR = System("floor", "uvloop relay, no HTTP work (floor)", "relay floor", tls=False, frontgate=False,
               diagnostic=True)
FLOOR_PARSERS = System("floor_parsers", "uvloop relay + the router's head parsers (floor)", "relay+parsers",
                       tls=False, frontgate=False, diagnostic=True)
SYSTEMS = {s.key: s for s in (FRONTGATE, REF_SEED, REF_CLOSE0, ROUTER, HAPROXY, DIRECT, FLOOR, FLOOR_PARSERS)}


@dataclass(frozen=True)
class Settings:
    duration: float = 10.0         # seconds per timed load run
    rounds: int = 3
    smoke: bool = False
    fg_workers: int = 1            # processes per frontgate daemon (their `workers` setting)
    terminator_workers: int = 1    # ... of the terminator, which may differ
    haproxy_threads: int = 2
    ws_tunnels: int = 5000
    ws_active: int = 100
    ab_requests: int = 1000        # scenario 6 (seed 001: ab -n1000 -c100)
    ab_concurrency: int = 100
    keep_workdir: bool = False


@dataclass(frozen=True)
class Endpoint:
    """Where a started stack listens, and whose memory is its memory."""
    port: int
    pids: tuple[int, ...]


class Run:
    def __init__(self, settings: Settings, log=print):
        self.settings = settings
        self.log = log
        self.workdir = Path(tempfile.mkdtemp(prefix="fg-bench-"))
        self.bin = Path(sys.executable).parent
        self.processes = Processes(logdir=self.workdir, cwd=REPO)
        self.pems: dict[str, Path] = {}
        self.backends: configs.Backends | None = None
        self._notes: dict[int, list[str]] = {}           # scenario id -> facts to print under its table
        self._counts: dict[int, dict[str, list[int]]] = {}  # scenario id -> what -> [hits, attempts]
        self._counter = 0

    def note(self, scenario: int, text: str) -> None:
        lines = self._notes.setdefault(scenario, [])
        if text not in lines:
            lines.append(text)

    def count(self, scenario: int, what: str, hits: int, attempts: int) -> None:
        """Accumulate a success count over the rounds, reported as one note."""
        total = self._counts.setdefault(scenario, {}).setdefault(what, [0, 0])
        total[0] += hits
        total[1] += attempts

    @property
    def notes(self) -> dict[int, list[str]]:
        out = {sid: list(lines) for sid, lines in self._notes.items()}
        for sid, counts in self._counts.items():
            out.setdefault(sid, []).extend(f"{what}: {hits} of {attempts}" for what, (hits, attempts) in counts.items())
        return out

    # ------------------------------------------------------------------ lifetime

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.processes.stop_all()
        if self.settings.keep_workdir:
            self.log(f"work dir kept: {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_backends(self, sleepy: bool) -> None:
        for kind in certs.KINDS:
            self.pems[kind] = certs.make_pem(kind, self.workdir / f"{kind}.pem")
        docroot = self.workdir / "www"
        docroot.mkdir()
        (docroot / "1k.bin").write_bytes(os.urandom(1024))
        (docroot / "64k.bin").write_bytes(os.urandom(64 * 1024))
        (self.workdir / "nginx-tmp").mkdir()
        nginx_port, ws_port = free_port(), free_port()
        conf = self.write("nginx.conf", configs.nginx_conf(self.workdir, nginx_port, docroot, os.geteuid() == 0))
        self.processes.start("nginx", ["nginx", "-e", str(self.workdir / "nginx-error.log"),
                                       "-p", str(self.workdir), "-c", str(conf)], ports=(nginx_port,))
        self.processes.start("ws-echo", [str(self.bin / "python"), "-m", "scripts.bench.backends", "ws-echo",
                                         "--port", str(ws_port)], ports=(ws_port,))
        sleepy_ports: tuple[int, ...] = ()
        if sleepy:
            sleepy_ports = tuple(free_port() for _ in range(3))
            for i, port in enumerate(sleepy_ports, 1):
                self.processes.start(f"sleepy{i}", [str(self.bin / "python"), "-m", "scripts.bench.backends",
                                                    "sleepy", "--port", str(port)], ports=(port,))
        self.backends = configs.Backends(nginx=nginx_port, ws_echo=ws_port, sleepy=sleepy_ports)

    def write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path

    # ------------------------------------------------------------------ stacks under test

    @contextlib.contextmanager
    def stack(self, system: System, cert: str = "ecdsa") -> Iterator[Endpoint]:
        """Start `system` fresh, yield where to send traffic, stop it."""
        assert self.backends is not None, "start_backends first"
        self._counter += 1
        tag = f"{self._counter:03d}-{system.key}-{cert}"
        with Processes(logdir=self.workdir, cwd=REPO) as procs:
            if system is DIRECT:
                if not self.backends.sleepy:
                    raise RuntimeError("the direct system needs the sleepy backends")
                yield Endpoint(self.backends.sleepy[0], ())
            elif system in (FRONTGATE, ROUTER):
                yield self._start_frontgate(procs, tag, tls=system.tls, cert=cert)
            elif system in (REF_SEED, REF_CLOSE0, HAPROXY):
                yield self._start_reference(procs, tag, system, cert=cert)
            elif system in (FLOOR, FLOOR_PARSERS):
                yield self._start_floor(procs, tag, parsers=system is FLOOR_PARSERS)
            else:
                raise ValueError(system)
            procs.check_alive()     # a daemon that died under load makes the measurement void

    def _start_frontgate(self, procs: Processes, tag: str, tls: bool, cert: str) -> Endpoint:
        """`fg_workers` routers and `terminator_workers` terminators, the way supervisord runs them in
        a deploy (the daemons do not fork workers themselves): TCP ports shared with SO_REUSEPORT
        (numprocs), and the routers' unix socket from the terminators bound once here and passed to
        each router as its stdin, as supervisord's fcgi-program does."""
        pids: list[int] = []
        if not tls:
            port = free_port()
            rcfg = self.write(f"{tag}-mux-router.toml",
                              configs.router_toml(self.workdir, port, None, self.backends, workers=1))
            for i in range(self.settings.fg_workers):
                pids.append(procs.start(f"{tag}-mux-router-{i}", [str(self.bin / "mux-router"), "--config", str(rcfg)],
                                        ports=(port,)).pid)
            return Endpoint(port, tuple(pids))
        path = self.workdir / f"{tag}-router.sock"
        shared = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        shared.bind(str(path))
        shared.listen(1024)
        rcfg = self.write(f"{tag}-mux-router.toml", configs.router_toml(
            self.workdir, None, f"unix:{path}", self.backends, workers=self.settings.fg_workers))
        with shared:        # the routers hold it from here on
            for i in range(self.settings.fg_workers):
                pids.append(procs.start(f"{tag}-mux-router-{i}", [str(self.bin / "mux-router"), "--config", str(rcfg)],
                                        stdin=shared, ready_line=f"listening on unix:{path}").pid)
        tls_port = free_port()
        tcfg = self.write(f"{tag}-tls-terminator.toml",
                          configs.terminator_toml(self.pems[cert], tls_port, f"unix:{path}", workers=1))
        for i in range(self.settings.terminator_workers):
            pids.append(procs.start(f"{tag}-tls-terminator-{i}",
                                    [str(self.bin / "tls-terminator"), "--config", str(tcfg)], ports=(tls_port,)).pid)
        return Endpoint(tls_port, tuple(pids))

    def _start_floor(self, procs: Processes, tag: str, parsers: bool) -> Endpoint:
        """As many relay processes as routers, sharing a port (SO_REUSEPORT), in front of nginx."""
        port = free_port()
        argv = [str(self.bin / "python"), "-m", "scripts.bench.floor", "--port", str(port),
                "--backend", str(self.backends.nginx), *(["--parsers"] if parsers else [])]
        pids = [procs.start(f"{tag}-{i}", argv, ports=(port,)).pid for i in range(self.settings.fg_workers)]
        return Endpoint(port, tuple(pids))

    def _start_reference(self, procs: Processes, tag: str, system: System, cert: str) -> Endpoint:
        haproxy_port = free_port()
        hcfg = self.write(f"{tag}-haproxy.cfg",
                          configs.haproxy_cfg(haproxy_port, self.backends, self.settings.haproxy_threads))
        # -db: foreground, no daemon, no master process: one process whose memory we read.
        haproxy = procs.start(f"{tag}-haproxy", ["haproxy", "-db", "-f", str(hcfg)], ports=(haproxy_port,))
        if system is HAPROXY:
            return Endpoint(haproxy_port, (haproxy.pid,))
        tls_port = free_port()
        scfg = self.write(f"{tag}-stunnel.conf",
                          configs.stunnel_conf(self.workdir, f"{tag}-stunnel", self.pems[cert], tls_port,
                                               haproxy_port, timeout_close_zero=system is REF_CLOSE0))
        stunnel = procs.start(f"{tag}-stunnel", ["stunnel", str(scfg)], ports=(tls_port,))
        return Endpoint(tls_port, (haproxy.pid, stunnel.pid))

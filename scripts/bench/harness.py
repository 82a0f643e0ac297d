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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from frontgate.config import load_router_config, load_terminator_config
from frontgate.route_store_file import write_table
from scripts.bench import certs, configs
from scripts.bench.procs import Processes, free_port, thread_count

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class System:
    key: str
    label: str
    short: str                    # for the chart
    tls: bool                     # reached over HTTPS (terminator / stunnel) or plain HTTP (router / HAProxy)
    frontgate: bool               # frontgate's side of the comparison
    diagnostic: bool = False      # a measuring stick beside the comparison (the relay floors), not a rival
    secondary: bool = False       # a second reference row: in its scenario's table, not in the summary
    access_log: bool = False      # frontgate as shipped: the router writes its access log to a file
    own_router: bool = False      # a reference that is mux-router itself (scenario 8: without dynamic routes)
    dynamic_routes: int = 0       # routes in the router's route table file (configs.route_table)


FRONTGATE = System("frontgate", "frontgate as shipped (terminator + router, access log on)", "frontgate (log on)",
                   tls=True, frontgate=True, access_log=True)
FRONTGATE_NOLOG = System("frontgate_nolog", "frontgate, access log off (terminator + router)", "frontgate (log off)",
                         tls=True, frontgate=True)
# THE reference of the TLS scenarios: stunnel as a user who benchmarks it runs it.
REF_TUNED = System("ref_tuned", "stunnel (tuned) + HAProxy", "stunnel(tuned)+HAProxy", tls=True, frontgate=False)
REF_SEED = System("ref_seed", "stunnel (seed 004 config) + HAProxy", "stunnel(seed)+HAProxy", tls=True,
                  frontgate=False, secondary=True)
ROUTER = System("router", "mux-router alone as shipped (plain HTTP, access log on)", "mux-router (log on)",
                tls=False, frontgate=True, access_log=True)
ROUTER_NOLOG = System("router_nolog", "mux-router alone, access log off (plain HTTP)", "mux-router (log off)",
                      tls=False, frontgate=True)
HAPROXY = System("haproxy", "HAProxy alone (plain HTTP)", "HAProxy", tls=False, frontgate=False)
# Scenario 7's reference: HAProxy terminating TLS itself, HTTP/2 offered by ALPN (issue 25).
HAPROXY_TLS = System("haproxy_tls", "HAProxy terminating TLS itself (alpn h2,http/1.1)", "HAProxy (TLS, h2)",
                     tls=True, frontgate=False)
DIRECT = System("direct", "direct to one backend (plain HTTP)", "one backend direct", tls=False, frontgate=False,
                secondary=True)
# Scenario 4's floors (scripts/bench/floor.py): what Python, uvloop and the sockets cost without
# the router's HTTP work, and with only its two head parsers.
FLOOR = System("floor", "uvloop relay, no HTTP work (floor)", "relay floor", tls=False, frontgate=False,
               diagnostic=True)
FLOOR_PARSERS = System("floor_parsers", "uvloop relay + the router's head parsers (floor)", "relay+parsers",
                       tls=False, frontgate=False, diagnostic=True)
# Scenario 8: the router as shipped with 10,000 dynamic routes beside its static apps, against
# itself with the static apps only (issue 21: within 5 %).
ROUTER_ROUTES = System("router_routes", "mux-router alone as shipped + 10,000 dynamic routes", "router + 10k routes",
                       tls=False, frontgate=True, access_log=True, dynamic_routes=10_000)
ROUTER_STATIC = System("router_static", "mux-router alone as shipped, static apps only", "router, static apps",
                       tls=False, frontgate=False, access_log=True, own_router=True)
SYSTEMS = {s.key: s for s in (FRONTGATE, FRONTGATE_NOLOG, REF_TUNED, REF_SEED, ROUTER, ROUTER_NOLOG, HAPROXY,
                              HAPROXY_TLS, DIRECT,
                              FLOOR, FLOOR_PARSERS, ROUTER_ROUTES, ROUTER_STATIC)}
RUN_WIDE = 0                      # the notes key of facts about the whole run (not one scenario)


@dataclass(frozen=True)
class Settings:
    duration: float = 10.0         # seconds per timed load run
    rounds: int = 3
    smoke: bool = False
    fg_workers: int | None = None  # processes per frontgate daemon; None: their shipped `workers = "auto"`
    terminator_workers: int | None = None    # ... of the terminator, when it should differ
    haproxy_threads: int = 2
    ws_tunnels: int = 5000
    ws_active: int = 100
    ab_requests: int = 1000        # scenario 6 (seed 001: ab -n1000 -c100)
    ab_concurrency: int = 100
    keep_workdir: bool = False


@dataclass(frozen=True)
class Endpoint:
    """Where a started stack listens, whose memory is its memory, and which processes make each of
    its stages: "tls" (terminator or stunnel) and "http" (router, HAProxy or a relay floor)."""
    port: int
    pids: tuple[int, ...]
    stages: dict[str, tuple[int, ...]] = field(default_factory=dict)
    access_log: Path | None = None   # the router's access log file, when it writes one


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
            elif system.frontgate or system.own_router:
                yield self._start_frontgate(procs, tag, system, cert=cert)
            elif system in (REF_TUNED, REF_SEED, HAPROXY, HAPROXY_TLS):
                yield self._start_reference(procs, tag, system, cert=cert)
            elif system in (FLOOR, FLOOR_PARSERS):
                yield self._start_floor(procs, tag, parsers=system is FLOOR_PARSERS)
            else:
                raise ValueError(system)
            procs.check_alive()     # a daemon that died under load makes the measurement void

    def _start_frontgate(self, procs: Processes, tag: str, system: System, cert: str) -> Endpoint:
        """As many routers and terminators as their `workers` say (the shipped "auto": one per CPU,
        unless --workers gives a number), the way supervisord runs them in a deploy (the daemons do
        not fork workers themselves): TCP ports shared with SO_REUSEPORT (numprocs), and the
        routers' unix socket from the terminators bound once here and passed to each router as its
        stdin, as supervisord's fcgi-program does. The shipped router writes its access log to a file."""
        s = self.settings
        log_file = self.workdir / f"{tag}-access.log" if system.access_log else None
        if not system.tls:
            port = free_port()
            table = self._route_table(tag, system.dynamic_routes) if system.dynamic_routes else None
            rcfg = self.write(f"{tag}-mux-router.toml", configs.router_toml(
                self.workdir, port, None, self.backends, workers=s.fg_workers, access_log_file=log_file,
                routes_file=table))
            # The routers read the table before they listen: the first request already sees every route.
            routers = self._start_routers(procs, tag, rcfg, ports=(port,), timeout=60)
            self.note(RUN_WIDE, f"{system.label}: {len(routers)} mux-router processes")
            return Endpoint(port, routers, {"http": routers}, log_file)
        path = self.workdir / f"{tag}-router.sock"
        shared = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        shared.bind(str(path))
        shared.listen(1024)
        rcfg = self.write(f"{tag}-mux-router.toml", configs.router_toml(
            self.workdir, None, f"unix:{path}", self.backends, workers=s.fg_workers, access_log_file=log_file))
        with shared:        # the routers hold it from here on
            routers = self._start_routers(procs, tag, rcfg, stdin=shared, ready_line=f"listening on unix:{path}")
        tls_port = free_port()
        tcfg = self.write(f"{tag}-tls-terminator.toml", configs.terminator_toml(
            self.pems[cert], tls_port, f"unix:{path}", workers=s.terminator_workers or s.fg_workers))
        count = load_terminator_config(tcfg).workers
        terminators = tuple(procs.start(f"{tag}-tls-terminator-{i}", [str(self.bin / "tls-terminator"), "--config",
                                                                      str(tcfg)], ports=(tls_port,)).pid
                            for i in range(count))
        self.note(RUN_WIDE, f"{system.label}: {count} tls-terminator and {len(routers)} mux-router processes")
        return Endpoint(tls_port, routers + terminators, {"tls": terminators, "http": routers}, log_file)

    def _route_table(self, tag: str, count: int) -> Path:
        """The route table file of `count` routes to nginx, written as `frontgate route` writes it."""
        path = self.workdir / f"{tag}-routes.json"
        write_table(path, configs.route_table(count, self.backends.nginx))
        return path

    def _start_routers(self, procs: Processes, tag: str, config: Path, **start) -> tuple[int, ...]:
        """The config's `workers` routers, counted by frontgate's own loader ("auto" included)."""
        count = load_router_config(config).workers
        return tuple(procs.start(f"{tag}-mux-router-{i}", [str(self.bin / "mux-router"), "--config", str(config)],
                                 **start).pid for i in range(count))

    def _start_floor(self, procs: Processes, tag: str, parsers: bool) -> Endpoint:
        """As many relay processes as routers, sharing a port (SO_REUSEPORT), in front of nginx."""
        port = free_port()
        argv = [str(self.bin / "python"), "-m", "scripts.bench.floor", "--port", str(port),
                "--backend", str(self.backends.nginx), *(["--parsers"] if parsers else [])]
        count = self.settings.fg_workers or len(os.sched_getaffinity(0))
        pids = tuple(procs.start(f"{tag}-{i}", argv, ports=(port,)).pid for i in range(count))
        return Endpoint(port, pids, {"http": pids})

    def _start_reference(self, procs: Processes, tag: str, system: System, cert: str) -> Endpoint:
        threads = self.settings.haproxy_threads
        haproxy_port = free_port()
        tls_pem = self.pems[cert] if system is HAPROXY_TLS else None
        hcfg = self.write(f"{tag}-haproxy.cfg", configs.haproxy_cfg(haproxy_port, self.backends, threads, tls_pem))
        # -db: foreground, no daemon, no master process: one process whose memory we read.
        haproxy = procs.start(f"{tag}-haproxy", ["haproxy", "-db", "-f", str(hcfg)], ports=(haproxy_port,))
        running = thread_count(haproxy.pid)
        self.note(RUN_WIDE, f"HAProxy: `nbthread {threads}`, {running} threads running")
        if system is HAPROXY:
            return Endpoint(haproxy_port, (haproxy.pid,), {"http": (haproxy.pid,)})
        if system is HAPROXY_TLS:       # one process does both stages: its CPU is the stack's only
            return Endpoint(haproxy_port, (haproxy.pid,), {"stack": (haproxy.pid,)})
        tls_port = free_port()
        scfg = self.write(f"{tag}-stunnel.conf",
                          configs.stunnel_conf(self.workdir, f"{tag}-stunnel", self.pems[cert], tls_port,
                                               haproxy_port, tuned=system is REF_TUNED))
        stunnel = procs.start(f"{tag}-stunnel", ["stunnel", str(scfg)], ports=(tls_port,))
        return Endpoint(tls_port, (haproxy.pid, stunnel.pid), {"tls": (stunnel.pid,), "http": (haproxy.pid,)})

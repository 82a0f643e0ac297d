"""Starting and always stopping the benchmark's processes.

Every daemon runs in its own session (so a Ctrl-C to the harness reaches only the harness, which then
stops them in order), writes its output to a log file in the run's work dir, and is stopped with
SIGTERM then SIGKILL. `Processes` is a context manager: leaving it, normally or by an exception or
KeyboardInterrupt, stops whatever it started.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (racy in theory; fine on one machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartError(RuntimeError):
    pass


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self, tail: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def _listens(pid: int, port: int) -> bool:
    """Does process `pid` (or a child it forked, like nginx's workers) hold a listening socket on `port`?"""
    try:
        root = psutil.Process(pid)
        for p in (root, *root.children(recursive=True)):
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    return True
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return False


def wait_for_port(port: int, timeout: float, daemon: Daemon | None = None) -> None:
    """Until `daemon` itself listens on 127.0.0.1:`port` (several SO_REUSEPORT workers share one port,
    so a successful connect would not tell which of them is up), or anything does when no daemon is given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon is not None:
            if not daemon.alive():
                raise StartError(f"{daemon.name} exited with {daemon.proc.returncode} before listening "
                                 f"on 127.0.0.1:{port}:\n{daemon.output()}")
            if _listens(daemon.pid, port):
                return
        else:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    where = f"\n{daemon.output()}" if daemon else ""
    raise StartError(f"nothing listening on 127.0.0.1:{port} after {timeout:g}s{where}")


@dataclass
class Processes:
    """The daemons of one run (or of one stack): started in order, stopped in reverse order."""
    logdir: Path
    cwd: Path
    started: list[Daemon] = field(default_factory=list)

    def start(self, name: str, argv: list[str], ports: tuple[int, ...] = (), timeout: float = 15.0,
              env: dict[str, str] | None = None, stdin: socket.socket | None = None,
              ready_line: str | None = None) -> Daemon:
        """`stdin`: a listening socket the daemon gets as fd 0, as supervisord's fcgi-program passes
        one; `ready_line`: wait until the daemon's output holds it (besides the `ports`)."""
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL if stdin is None else stdin.fileno(),
                                    cwd=self.cwd, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        daemon = Daemon(name, proc, log)
        self.started.append(daemon)
        for port in ports:
            wait_for_port(port, timeout, daemon)
        if ready_line is not None:
            deadline = time.monotonic() + timeout
            while ready_line not in daemon.output():
                if not daemon.alive() or time.monotonic() > deadline:
                    raise StartError(f"{name}: no {ready_line!r} in its output:\n{daemon.output()}")
                time.sleep(0.05)
        return daemon

    def pids(self, *names: str) -> list[int]:
        return [d.pid for d in self.started if d.name in names and d.alive()]

    def check_alive(self) -> None:
        for d in self.started:
            if not d.alive():
                raise StartError(f"{d.name} died (exit {d.proc.returncode}):\n{d.output()}")

    def stop_all(self, grace: float = 5.0) -> None:
        for d in reversed(self.started):
            if d.alive():
                _signal_group(d.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for d in reversed(self.started):
            try:
                d.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(d.proc, signal.SIGKILL)
                d.proc.wait(5)
        self.started.clear()

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """The daemon and whatever workers it forked: they share the session we gave it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def tree_rss(pids: list[int]) -> int:
    """Resident bytes of these processes and all their descendants (forked workers)."""
    total = 0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return total


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system CPU these processes have used so far, every thread of each (/proc/PID/stat
    counts a whole thread group). A process that has gone counts nothing: the caller checks the
    stack is still alive after its measurement."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def thread_count(pid: int) -> int:
    try:
        return psutil.Process(pid).num_threads()
    except psutil.NoSuchProcess:
        return 0


def run_tool(argv: list[str], timeout: float, cwd: Path | None = None) -> str:
    """Run a load generator to completion, bounded by `timeout`; returns stdout+stderr.
    A non-zero exit is an error carrying the output."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=timeout, cwd=cwd, text=True, errors="replace")
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        raise RuntimeError(f"{argv[0]} did not finish within {timeout:g}s:\n{out[-2000:]}") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout[-2000:]}")
    return done.stdout

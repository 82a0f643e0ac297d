"""Shared test plumbing: free ports, real daemon subprocesses, waiting for them."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent          # the venv's bin: tls-terminator, mux-router, ...


def sslyze_binary() -> Path | None:
    """sslyze, in its own venv (Makefile: .venv-sslyze), or where $SSLYZE says; None when absent."""
    for candidate in (os.environ.get("SSLYZE"), REPO / ".venv-sslyze" / "bin" / "sslyze"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just gave out; racy in theory, fine on a test machine."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = daemon_output(proc)
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before listening:\n{out}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def start_daemon(argv: list[str], wait_for: tuple[str, int] | None = None, timeout: float = 10.0,
                 **kwargs) -> subprocess.Popen:
    """Start a daemon and wait until `wait_for` accepts. Its stdout and stderr go to a temporary
    file (a pipe nobody reads would fill up and block the daemon); `daemon_output` reads it."""
    if argv and os.path.sep not in argv[0] and (BIN / argv[0]).exists():
        argv = [str(BIN / argv[0]), *argv[1:]]
    kwargs.setdefault("cwd", REPO)
    log = tempfile.NamedTemporaryFile(prefix="daemon-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    log.close()
    proc.log_path = Path(log.name)
    if wait_for is not None:
        try:
            wait_for_port(*wait_for, timeout=timeout, proc=proc)
        except Exception:
            stop_daemon(proc)
            raise
    return proc


def daemon_output(proc: subprocess.Popen) -> str:
    """Everything the daemon has printed so far."""
    return proc.log_path.read_text(errors="replace")


def stop_daemon(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """SIGTERM, then SIGKILL after `timeout`; returns what it printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    out = daemon_output(proc)
    proc.log_path.unlink(missing_ok=True)
    return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s")
        time.sleep(interval)

"""A real redis-server (and redis-sentinel) for the route store tests: each on a free loopback
port, in a temporary directory, started and stopped by the test. Skips when the Debian packages
are missing (`make test` installs them)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for_port


def need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/bin:/usr/sbin")
    if path is None:
        pytest.skip(f"{binary} is not installed (make test installs it)")
    return path


class _Daemon:
    """A redis-server or redis-sentinel we started: redis-cli against it, and SIGKILL to stop."""
    port: int
    proc: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        return subprocess.run([need("redis-cli"), "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class RedisServer(_Daemon):
    def __init__(self, directory: Path, replica_of: "RedisServer | None" = None):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.replica_of = replica_of
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        argv = [need("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--logfile", str(self.dir / "log")]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)
        return self


class Sentinel(_Daemon):
    def __init__(self, directory: Path, master: RedisServer, name: str = "routes"):
        self.dir, self.master, self.name = directory, master, name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Sentinel":
        conf = self.dir / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'log'}\n"
                        f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
                        f"sentinel down-after-milliseconds {self.name} 1000\n"
                        f"sentinel failover-timeout {self.name} 5000\n")
        self.proc = subprocess.Popen([need("redis-sentinel"), str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)
        return self

    def master_port(self) -> int:
        return int(self.cli("SENTINEL", "get-master-addr-by-name", self.name).split()[-1])


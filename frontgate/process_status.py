"""Each daemon process's account of itself: which config it runs (the fingerprint, see
frontgate.fingerprint) and how its last reload went, in a small JSON file per process,
run/status/PROCESS.PID.json, replaced atomically.

This is how `frontgate reload` learns that every process took (or refused) a SIGHUP, how
`frontgate restart` learns that a new process serves, how `frontgate status` shows what each
process runs, and how `frontgate route add --wait` learns that every router process applied the
route table version it wrote (`routes_version`, rewritten at each table swap). Logs cannot tell it reliably: the router's traffic would drown the lines.

PROCESS is supervisord's process name (mux-router, or mux-router_00, ... with several workers),
from SUPERVISOR_PROCESS_NAME; without supervisord, the stage's name.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontgate.fingerprint import stage_fingerprint

OK, ERROR = "ok", "error"


def status_path(directory: Path, process: str, pid: int) -> Path:
    return directory / f"{process}.{pid}.json"


def read_status(directory: Path, process: str, pid: int) -> dict[str, Any] | None:
    """What process `process` with `pid` last recorded; None when it has not (yet)."""
    try:
        return json.loads(status_path(directory, process, pid).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class ProcessStatus:
    """The daemon's side. `directory` None: record nothing (a daemon run by hand or by a test)."""
    directory: Path | None
    stage: str
    config: Path                    # the stage's own TOML
    process: str = ""
    pid: int = field(default_factory=os.getpid)
    fingerprint: str = ""
    reloads: int = 0                # SIGHUPs handled, so that a waiter can tell its own from older ones
    started_at: float = field(default_factory=time.time)
    routes_version: int | None = None    # the router's: the dynamic route table version it serves
    _last: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.process = self.process or os.environ.get("SUPERVISOR_PROCESS_NAME") or self.stage

    def config_on_disk(self) -> str:
        """The fingerprint of the files now: taken before they are loaded, so what is loaded is at
        least as new as what is recorded (a change in between shows as a difference, never hides)."""
        return stage_fingerprint(self.stage, self.config)

    def started(self, fingerprint: str) -> None:
        """Serving: record the config and remove what earlier processes of this name left behind."""
        self.fingerprint = fingerprint
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob(f"{self.process}.*.json"):
            if old.name != status_path(self.directory, self.process, self.pid).name:
                old.unlink(missing_ok=True)
        self._write("start", OK, "")

    def reloaded(self, fingerprint: str | None = None, error: str | None = None) -> None:
        """A SIGHUP handled: the new config's fingerprint, or the error that kept the old one."""
        self.reloads += 1
        if error is None and fingerprint is not None:
            self.fingerprint = fingerprint
        self._write("reload", ERROR if error is not None else OK, error or "")

    def changed(self, fingerprint: str, what: str) -> None:
        """A change taken without a SIGHUP (the terminator's certificate poll)."""
        self.fingerprint = fingerprint
        self._write(what, OK, "")

    def routes_applied(self, version: int) -> None:
        """The router swapped in route table `version` (recorded once it has started: before, the
        start record carries it)."""
        if version != self.routes_version:
            self.routes_version = version
            if self._last:
                self._write(**self._last)

    def stopped(self) -> None:
        if self.directory is not None:
            status_path(self.directory, self.process, self.pid).unlink(missing_ok=True)

    def _write(self, event: str, outcome: str, message: str) -> None:
        self._last = {"event": event, "outcome": outcome, "message": message}
        if self.directory is None:
            return
        record = {"stage": self.stage, "process": self.process, "pid": self.pid,
                  "config": str(Path(self.config).absolute()),
                  "fingerprint": self.fingerprint, "started_at": self.started_at, "reloads": self.reloads,
                  "routes_version": self.routes_version, "last": self._last | {"time": time.time()}}
        path = status_path(self.directory, self.process, self.pid)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(record) + "\n")
            tmp.replace(path)         # readers see the old record or the new one, whole
        except OSError:
            pass                      # best effort: `frontgate reload` then says it heard nothing


def live_records(directory: Path, stage: str, config: Path) -> list[dict[str, Any]]:
    """The records of the processes of `stage` running `config` that are alive now (a crashed
    process's file stays until a successor of the same name starts: its pid is gone)."""
    config = Path(config).resolve()
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(record, dict) and record.get("stage") == stage and _alive(record.get("pid"))
                and Path(str(record.get("config"))).resolve() == config):
            records.append(record)
    return records


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True               # alive, another user's
    return True

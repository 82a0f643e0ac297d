"""The health state file: written by health-checker, followed by mux-router.

Format 1 (JSON, one object):

    {"format": 1, "generation": 42, "written_at": 1795423162.7, "checker_pid": 1234,
     "servers": {"maps/127.0.0.1:3000": {"state": "up", "since": 1795423100.1,
                 "last_check": {"ok": true, "took_ms": 2.1, "detail": "HTTP 200"}}}}

A server held down by flap damping is "down" with `"flapping": true` (absent otherwise).

The file is always replaced whole (temp file, fsync, rename), so a reader sees the old or the new
content, never a mix. A reader still validates everything: a file written by hand or by a broken
checker must not take servers out of rotation.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

FORMAT = 1
STATES = ("up", "down")
TEMP_SUFFIX = ".tmp"
MAX_FILE_SIZE = 16 * 1024 * 1024   # far above any real file; a bound so a stray huge file is not slurped

log = logging.getLogger("frontgate.health_state")


class HealthStateError(ValueError):
    """The state file's content is not a valid format-1 health state."""


@dataclass(frozen=True)
class ServerState:
    state: str                     # "up" | "down"
    since: float                   # wall-clock time of the last transition
    last_check: Mapping[str, Any]  # {"ok": bool, "took_ms": float, "detail": str}
    flapping: bool = False         # held down by flap damping (state is "down"); written only when true


@dataclass(frozen=True)
class HealthState:
    generation: int
    written_at: float
    checker_pid: int
    servers: Mapping[str, ServerState] = field(default_factory=dict)


# --------------------------------------------------------------------------- encoding (pure)

def dumps(state: HealthState) -> bytes:
    doc = {
        "format": FORMAT,
        "generation": state.generation,
        "written_at": state.written_at,
        "checker_pid": state.checker_pid,
        "servers": {key: {"state": s.state, "since": s.since, "last_check": dict(s.last_check),
                          **({"flapping": True} if s.flapping else {})}
                    for key, s in sorted(state.servers.items())},
    }
    return (json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n").encode()


def loads(data: bytes | str) -> HealthState:
    """Parse and validate; every problem is a HealthStateError naming the offending field."""
    if len(data) > MAX_FILE_SIZE:
        raise HealthStateError(f"more than {MAX_FILE_SIZE} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError is a ValueError
        raise HealthStateError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise HealthStateError("not a JSON object")
    if doc.get("format") != FORMAT:
        raise HealthStateError(f"format: expected {FORMAT}, got {doc.get('format')!r}")
    generation = _int(doc, "generation", "generation")
    written_at = _time(doc, "written_at", "written_at")
    checker_pid = _int(doc, "checker_pid", "checker_pid")
    servers_doc = doc.get("servers")
    if not isinstance(servers_doc, dict):
        raise HealthStateError("servers: expected an object")
    servers = {}
    for key, s in servers_doc.items():
        where = f"servers[{key!r}]"
        if not isinstance(s, dict):
            raise HealthStateError(f"{where}: expected an object")
        if s.get("state") not in STATES:
            raise HealthStateError(f"{where}.state: expected 'up' or 'down', got {s.get('state')!r}")
        last = s.get("last_check")
        if not isinstance(last, dict):
            raise HealthStateError(f"{where}.last_check: expected an object")
        if not isinstance(last.get("ok"), bool):
            raise HealthStateError(f"{where}.last_check.ok: expected true or false")
        took_ms = _number(last, "took_ms", f"{where}.last_check.took_ms")
        if not isinstance(last.get("detail"), str):
            raise HealthStateError(f"{where}.last_check.detail: expected a string")
        flapping = s.get("flapping", False)
        if not isinstance(flapping, bool):
            raise HealthStateError(f"{where}.flapping: expected true or false")
        servers[key] = ServerState(state=s["state"], since=_time(s, "since", f"{where}.since"),
                                   last_check={"ok": last["ok"], "took_ms": took_ms, "detail": last["detail"]},
                                   flapping=flapping and s["state"] == "down")
    return HealthState(generation=generation, written_at=written_at, checker_pid=checker_pid, servers=servers)


def _number(doc: dict, name: str, where: str) -> float:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HealthStateError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _time(doc: dict, name: str, where: str) -> float:
    value = _number(doc, name, where)
    if value < 0:
        raise HealthStateError(f"{where}: negative time {value!r}")
    return value


def _int(doc: dict, name: str, where: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HealthStateError(f"{where}: expected a non-negative integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- file I/O

def temp_prefix(path: Path) -> str:
    """Temp files are `.health.json.XXXXXX.tmp` next to the state file: hidden, and easy to find
    and remove when a writer was killed before its rename."""
    return f".{Path(path).name}."


def write_atomic(path: Path, state: HealthState) -> None:
    write_bytes_atomic(path, dumps(state))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, whole, even
    across a crash: write a temp file in the same directory (rename is atomic only within one
    filesystem), fsync it, rename it over the old one, fsync the directory (makes the rename
    itself durable). The route table files (frontgate/route_store_file.py) are written the same way."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)      # mkstemp makes 0600; the router may run as another user
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(path: Path) -> HealthState:
    """Read and validate the state file. OSError (e.g. FileNotFoundError) when it cannot be read,
    HealthStateError when its content is bad."""
    return loads(_read_bytes(Path(path))[0])


def _read_bytes(path: Path) -> tuple[bytes, tuple[int, int, int]]:
    # fstat the open file, not the path: the signature then belongs to exactly the bytes read,
    # even if the checker replaces the file between our stat and our read.
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(MAX_FILE_SIZE + 1), _signature(st)


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# --------------------------------------------------------------------------- the router's view

class FileFollower:
    """A cheap view of a file another process replaces whole: `refresh()` stats it (one syscall)
    and re-reads and parses it (`loads`) only when it changed. A bad file is logged once and the
    last good content kept; a missing file means no content (None). Followed files: the health
    state (StateFollower) and the route table (frontgate/route_store_file.py)."""

    def __init__(self, path: Path, loads: Callable[[bytes], Any], what: str, missing: str = "does not exist",
                 kept: str = "content"):
        self.path = Path(path)
        self._kept = f"keeping the last good {kept}"
        self._loads = loads
        self._what = what                    # "health state", for the log
        self._missing = missing              # what a missing file means, for the log
        self._signature: tuple[int, int, int] | None = None
        self._value: Any = None
        self._problem: str | None = None     # the last problem logged, so each is logged once

    @property
    def value(self) -> Any:
        """The last good content read, or None."""
        return self._value

    def refresh(self) -> bool:
        """True when the content changed (a new good file, or the file went away)."""
        try:
            signature = _signature(os.stat(self.path))
        except FileNotFoundError:
            self._report(self._missing)
            changed = self._value is not None
            self._signature, self._value = None, None
            return changed
        except OSError as e:
            self._report(f"cannot stat ({e.strerror}), {self._kept}")
            return False
        return signature != self._signature and self._reload()

    def _reload(self) -> bool:
        try:
            data, signature = _read_bytes(self.path)
        except FileNotFoundError:
            return False       # removed since the stat: the next refresh sees what is there
        except OSError as e:
            self._report(f"cannot read ({e.strerror}), {self._kept}")
            return False
        # Remember the signature even when the content is bad, so that the same bad file is not
        # re-read and re-logged on every poll; the writer's next write replaces it.
        self._signature = signature
        try:
            self._value = self._loads(data)
        except ValueError as e:
            self._report(f"is invalid ({e}), {self._kept}", force=True)
            return False
        if self._problem is not None:
            log.info("%s %s read again", self._what, self.path)
            self._problem = None
        return True

    def _report(self, problem: str, force: bool = False) -> None:
        if force or problem != self._problem:
            log.warning("%s %s %s", self._what, self.path, problem)
        self._problem = problem


class StateFollower(FileFollower):
    """The router's view of the health state file; `is_down()` is a dict lookup.

    Fail open: a server counts as down only if a fresh, valid file says so. A missing file, a
    stale one (the checker stopped writing) or a server absent from it means "not down"; the
    router's own connect errors cover the gap. A bad file is logged and the last good content kept.
    """

    def __init__(self, path: Path, stale_after: float, clock: Callable[[], float] = time.time):
        super().__init__(path, loads, "health state", "does not exist: treating all servers as up", "state")
        self.stale_after = stale_after
        self._clock = clock
        self._stale_logged = False

    @property
    def state(self) -> HealthState | None:
        """The last good state read, or None."""
        return self._value

    @property
    def _state(self) -> HealthState | None:
        return self._value

    def refresh(self) -> bool:
        changed = super().refresh()
        self._log_staleness()
        return changed

    def is_stale(self) -> bool:
        if self._state is None:
            return True
        age = self._clock() - self._state.written_at
        # A file from the far future (clock stepped back) is no more trustworthy than an old one.
        return not -self.stale_after <= age <= self.stale_after

    def _log_staleness(self) -> None:
        if self._state is None:
            return
        stale = self.is_stale()
        if stale and not self._stale_logged:
            age = self._clock() - self._state.written_at
            log.warning("health state %s is stale (written %.1fs ago, limit %gs; checker pid %d): "
                        "treating all servers as up", self.path, age, self.stale_after, self._state.checker_pid)
        elif not stale and self._stale_logged:
            log.info("health state %s is fresh again (generation %d)", self.path, self._state.generation)
        self._stale_logged = stale

    def entry(self, key: str) -> "ServerState | None":
        """What a fresh state file says of a server; None without one (stale, absent, not in it)."""
        if self._state is None or self.is_stale():
            return None
        return self._state.servers.get(key)

    def is_down(self, key: str) -> bool:
        server = self.entry(key)
        return server is not None and server.state == "down"

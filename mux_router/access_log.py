"""The router's access log: one line per request, apart from the daemon's own events (those go to
stderr, which supervisord files as logs/mux-router.log).

Lines are queued and written in one write per event-loop pass (a write per line would cost a
syscall per request), to `router.access_log_file`, opened O_APPEND: every worker appends to the
same file, each batch whole. `access_log_file = "-"` writes to stdout instead. SIGUSR1 reopens the
file (after logrotate has moved it away); a reload that names another file switches to it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from frontgate.logfields import escape_field

log = logging.getLogger("mux-router")

STDOUT_FD = 1


@dataclass(frozen=True)
class Target:
    """An open log destination: `path` None is stdout."""
    path: Path | None
    fd: int


_target = Target(None, STDOUT_FD)     # until the router opens its file (in-process tests: stdout)
_pending: list = []          # lines, and httplog entries (fields, note) to be formatted at the flush
_write_error: list[str] = []      # the last write error, logged once until a write succeeds again
_log_date = [-1, ""]         # httplog's accept date to the second, made once a second: [second, text]


def open_target(path: Path | None, wanted: bool = True) -> Target | None:
    """The target to switch to for `path` (None: stdout), opened; None when nothing is to change
    (already writing there, or no lines wanted). OSError, naming the file, when it cannot be opened."""
    if not wanted or path == _target.path:
        return None
    if path is None:
        return Target(None, STDOUT_FD)
    try:
        return Target(path, _open(path))
    except OSError as e:
        raise OSError(e.errno, f"cannot open the access log {path}: {e.strerror}") from None


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def use(target: Target | None) -> None:
    """Write to `target` from now on (None: no change); what was queued goes to the old one first."""
    global _target
    if target is None:
        return
    if _pending:
        flush()
    old, _target = _target, target
    if old.fd != STDOUT_FD and old.fd != target.fd:
        os.close(old.fd)


def discard(target: Target | None) -> None:
    """Close a target that a refused reload opened."""
    if target is not None and target.fd != STDOUT_FD:
        os.close(target.fd)


def reopen() -> None:
    """SIGUSR1: open the file by its name again (logrotate renamed the old one); on error keep
    writing where we were."""
    path = _target.path
    if path is None:
        return
    try:
        fd = _open(path)
    except OSError as e:
        log.error("SIGUSR1: cannot reopen the access log %s, still writing to the old file: %s", path, e.strerror)
        return
    use(Target(path, fd))
    log.info("SIGUSR1: access log %s reopened", path)


def access_log(entry: str | tuple) -> None:
    """Queue an access-log line, or an httplog entry; the lines of one event-loop pass go out in one
    write at its end, so no line waits longer than that pass. An httplog entry is formatted then too:
    formatting the pass's lines in one go costs less than one at a time between the requests' other work."""
    if not _pending:
        asyncio.get_running_loop().call_soon(flush)
    _pending.append(entry)


def flush() -> None:
    data = ("\n".join([e if type(e) is str else httplog_line(*e) for e in _pending]) + "\n").encode(errors="replace")
    _pending.clear()
    fd = _target.fd
    try:
        while data:                 # a regular file takes it all at once; a pipe may not
            data = data[os.write(fd, data):]
    except OSError as e:
        problem = f"{_target.path or 'stdout'}: {e.strerror}"
        if _write_error != [problem]:
            log.error("cannot write the access log, lines lost: %s", problem)
            _write_error[:] = [problem]
        return
    _write_error.clear()


def _log_second(second: int) -> str:
    if second != _log_date[0]:
        _log_date[:] = second, time.strftime("%d/%b/%Y:%H:%M:%S", time.gmtime(second))
    return _log_date[1]


def httplog_line(fields: tuple, note: str) -> str:
    """An httplog entry's line; `fields` are _HTTPLOG's with the accept time in ms where the date goes."""
    ip, port, accepted_ms, *rest = fields
    line = _HTTPLOG % (ip, port, _log_second(accepted_ms // 1000), accepted_ms % 1000, *rest)
    return line + f" ({note})" if note else line


_HTTPLOG = '%s:%d [%s.%03d] %s %s/%s %.0f/%.0f/%.0f/%.0f/%.0f %d %d - - %s %d/%d/0/0/%d 0/0 "%s"'


def record(router, peer, started: float, route: str | None, status: int, sent: int, request, note: str,
           termination: str, tq: float, tw: float, tc: float, tr: float, tt: float, retries: int,
           received: int = 0) -> None:
    """Count a request, and log it as `access_log` says. `request`: its head, or the text that
    stands for its request line; the line is made only for a log line. `peer`: who asked
    (peer.Peer), `started`: when its first byte came (time.monotonic)."""
    backend, _, server = (route or "-/-").partition("/")
    router.stats.request_done(backend, server, status, received, sent)
    which = router.config.access_log
    if which != "all" and (which == "off" or _normal(status, termination, retries)):
        return
    accepted = time.time() - (time.monotonic() - started)
    # Every text field escaped, in both formats alike: a client chose the target and maybe the
    # note (an SNI name, a header in an error), and must not end the line or the field.
    request_line = escape_field(request if type(request) is str else request.request_line)
    note, frontend = escape_field(note), escape_field(peer.listener.name)
    backend, server = escape_field(backend), escape_field(server or "-")
    ip, port = peer.client
    ip = escape_field(ip)
    if router.config.access_log_format == "json":
        access_log(json.dumps({
            "client_ip": ip, "client_port": port,
            "accept_date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(accepted)) + f".{int(accepted * 1000) % 1000:03d}Z",
            "frontend": frontend, "backend": backend, "server": server,
            "Tq": round(tq), "Tw": round(tw), "Tc": round(tc), "Tr": round(tr), "Tt": round(tt),
            "status": status, "bytes": sent, "termination_state": termination, "retries": retries,
            "request": request_line, "note": note}, separators=(",", ":")))
        return
    # HAProxy's httplog: client [accept date] frontend backend/server Tq/Tw/Tc/Tr/Tt status
    # bytes - - termination actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue "request"
    actconn = len(router.connections)
    access_log(((ip, port, int(accepted * 1000), frontend, backend, server, tq, tw, tc, tr,
                 tt, status, sent, termination, actconn, actconn, retries, request_line), note))


def _normal(status: int, termination: str, retries: int) -> bool:
    """A request that `access_log = "errors"` leaves out, as HAProxy's `option dontlog-normal`:
    answered below 500, ended normally (or by a redirect), no retry."""
    return status < 500 and termination in ("--", "LR") and not retries

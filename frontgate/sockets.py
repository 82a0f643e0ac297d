"""Listening sockets, one way for every daemon: a TCP port shared by a stage's workers
(SO_REUSEPORT), a unix socket path (a stale one from a previous run removed first), or the unix
listener supervisord passes a program on its stdin (fcgi-program)."""
from __future__ import annotations

import contextlib
import os
import socket
import stat

from frontgate.config import Address

BACKLOG = 1024             # the kernel's queue of unaccepted clients (where they wait at max_connections)


def remove_stale_socket(path: str) -> None:
    """A socket file left at `path` by a previous run (never a file of another kind)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def open_listener(address: Address, backlog: int = BACKLOG) -> socket.socket:
    """A non-blocking listening socket. SO_REUSEPORT: several workers (supervisord numprocs) share
    the port, and a restarted worker binds while the others keep serving."""
    if address.is_unix:
        remove_stale_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address.path
    else:
        family, _, _, _, target = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                                     flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(target)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def inherited_unix_listener(path: str) -> socket.socket | None:
    """The listening unix socket bound to `path` that this process got as its stdin, if it did:
    that is how supervisord's fcgi-program hands one socket to all the processes of a program. The
    kernel spreads a TCP port over workers (SO_REUSEPORT) but not a unix socket path, so several
    workers can share a unix listener only this way."""
    try:
        if not stat.S_ISSOCK(os.fstat(0).st_mode):
            return None
        sock = socket.socket(fileno=os.dup(0))
    except OSError:
        return None
    try:
        if (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                and os.path.normpath(sock.getsockname()) == os.path.normpath(path)):
            sock.setblocking(False)
            return sock
    except OSError:
        pass
    sock.close()
    return None

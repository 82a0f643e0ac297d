"""The embedded route store: the table is one JSON file (routes.dumps), replaced whole and
atomically (health_state.write_bytes_atomic) and followed by the router and the checker
(health_state.FileFollower). Writers take an exclusive lock on a `.lock` file beside it, so two
`frontgate route add` at once both land."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable

from frontgate import routes
from frontgate.health_state import FileFollower, write_bytes_atomic
from frontgate.route_store import StoreError, guarded


def read_table(path: Path) -> routes.RouteTable:
    """The table in `path`; EMPTY when there is none. StoreError when it is unreadable or invalid."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return routes.EMPTY
    except OSError as e:
        raise StoreError(f"{path}: {e.strerror}") from None
    try:
        return routes.loads(data)
    except routes.RouteError as e:
        raise StoreError(f"{path}: {e}") from None


def write_table(path: Path, table: routes.RouteTable) -> None:
    write_bytes_atomic(Path(path), routes.dumps(table))


class FileStore:
    name = "file"

    def __init__(self, path: Path):
        self.path = Path(path)

    def describe(self) -> str:
        return f"file {self.path}"

    def read(self) -> routes.RouteTable:
        return read_table(self.path)

    def change(self, edit: Callable[[routes.RouteTable], routes.RouteTable], force: bool = False) -> routes.RouteTable:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            old = self.read()
            new = guarded(old, edit(old), force)
            write_table(self.path, new)
            return new
        finally:
            os.close(fd)

    def node_versions(self) -> dict[str, int]:
        """One host: the file is what its router serves (it follows it within a quarter second)."""
        return {}


def follower_for(path: Path) -> FileFollower:
    """The route table file, followed (by the router and the health checker)."""
    return FileFollower(path, routes.loads, "route table", "does not exist: no dynamic routes", "table")


def followed_table(follower: FileFollower) -> routes.RouteTable:
    return follower.value or routes.EMPTY

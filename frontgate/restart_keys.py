"""What a reload (SIGHUP) cannot change in a running process, and how it says so.

A daemon binds some sockets once, at start (the terminator's listener and privileges, either
stage's admin listener): a reload that changes them is refused whole, `file: key: needs a
restart`, and the running config keeps serving. Applying the rest of such a file would leave the
process serving a config that says something it does not do.
"""
from __future__ import annotations

from typing import Iterable

from frontgate.config import AdminConfig, ConfigError

Change = tuple[str, object, object]     # (the key as the file spells it, running value, value in the file)


def refuse_restart_changes(file, changes: Iterable[Change]) -> None:
    """ConfigError for the first key whose value in the file differs from the running one."""
    for key, running, new in changes:
        if running != new:
            raise ConfigError(file, key, f"needs a restart (running with {_shown(running)}, "
                                         f"the file says {_shown(new)})")


def admin_changes(running: AdminConfig | None, new: AdminConfig | None) -> list[Change]:
    """[admin]: its listener is bound and its snapshot directory taken once, at start (its
    `refresh` follows a reload)."""
    def part(admin: AdminConfig | None, name: str):
        return None if admin is None else getattr(admin, name)
    return [(f"admin.{name}", part(running, name), part(new, name)) for name in ("address", "stats_dir")]


def _shown(value: object) -> str:
    return "none" if value is None else str(value)

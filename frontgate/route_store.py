"""The two route stores behind one interface (`read`, `change`, `node_versions`):

- route_store_file.FileStore: the table is the local file the router follows (one host).
- route_store_redis.RedisStore: one table for a fleet; each node's `frontgate route sync` keeps
  the local file (its snapshot) in line with it.

`change(edit, force)` applies `edit` (RouteTable -> RouteTable) to the current table as one
transaction: a concurrent writer is never lost (the file store locks, Redis retries its WATCH).
"""
from __future__ import annotations

import dataclasses

from frontgate import routes
from frontgate.config.routes import RoutesConfig


class StoreError(Exception):
    """The store cannot be reached or refused the change (the text says which)."""


def guarded(old: routes.RouteTable, new: routes.RouteTable, force: bool) -> routes.RouteTable:
    """`new` as it may be written: marked forced with --force, else refused by the shrink and
    version guard (routes.transition_problem)."""
    if force:
        return dataclasses.replace(new, forced=new.version)
    problem = routes.transition_problem(old, new)
    if problem is not None:
        raise StoreError(problem)
    return new


def open_store(cfg: RoutesConfig):
    if cfg.shared:
        from frontgate.route_store_redis import RedisStore
        return RedisStore(cfg)
    from frontgate.route_store_file import FileStore
    return FileStore(cfg.file)

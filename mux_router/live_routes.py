"""The router's dynamic routes: it follows the route table file (frontgate/routes.py) and serves
the static apps plus the routes as one RouterConfig, swapped in one assignment.

A request reads `router.config` once and keeps that object to the end (exchange.py),
so it sees the whole old table or the whole new one; nothing is reloaded and no connection is
touched. The file is the local store's table or, with Redis, this node's snapshot of the fleet's
table (written by `frontgate route sync`); either way it is replaced whole, atomically.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from frontgate import routes
from frontgate.config import RouterConfig
from frontgate.route_store_file import follower_for, followed_table

if TYPE_CHECKING:
    from mux_router.router import Router

log = logging.getLogger("mux-router")

REFRESH_INTERVAL = 0.25      # seconds between two stats of the table file (one syscall each)


class LiveRoutes:
    def __init__(self, static: RouterConfig):
        self.static = static
        self.follower = follower_for(static.routes.file)
        self.follower.refresh()

    @property
    def table(self) -> routes.RouteTable:
        return followed_table(self.follower)

    def merge(self, static: RouterConfig) -> RouterConfig:
        """The config to serve for a (re)loaded static config: its apps, then the routes."""
        if static.routes.file != self.static.routes.file:
            self.follower = follower_for(static.routes.file)
            self.follower.refresh()
        self.static = static
        return routes.merged(static, self.table)

    def apply(self, router: Router) -> None:
        config = routes.merged(self.static, self.table)
        router._set_apps(config.apps)      # slots and balancers first: no await until the swap
        router.config = config
        log.info("route table version %d applied: %d routes", self.table.version, len(self.table))

    async def follow(self, router: Router) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                if self.follower.refresh():
                    self.apply(router)
            except Exception:     # never let one bad table stop the follower
                log.exception("applying the route table failed")

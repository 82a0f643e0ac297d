"""`frontgate route sync`: one per node (a supervisord program), keeps this node's route table
file in line with the fleet's table in Redis. The router and the checker follow that file, so it
is also the snapshot the node serves from while Redis is unreachable, and starts from after a
restart.

The change arrives by hint, poll or resync on reconnect (frontgate.redis_follow, shared with
cert-manager's fleet). A table is written to the file only if it passes
routes.transition_problem (no version going backwards, no shrink by more than half unless
written with --force); a refused one is logged once and reported in this node's record, which
`route status` shows.
"""
from __future__ import annotations

import logging

from frontgate import routes
from frontgate.config.routes import RoutesConfig
from frontgate.redis_follow import Follower, record_ttl
from frontgate.route_store import StoreError
from frontgate.route_store_file import read_table, write_table
from frontgate.route_store_redis import RedisStore

log = logging.getLogger("route-sync")


class Syncer(Follower):
    def __init__(self, cfg: RoutesConfig):
        self.cfg = cfg
        self.store = RedisStore(cfg)
        super().__init__(self.store.client, self.store.keys.channel, cfg.poll_interval, log)
        try:
            self.applied = read_table(cfg.file)          # the snapshot: what this node serves now
        except StoreError as e:
            log.error("snapshot unreadable, starting from an empty table: %s", e)
            self.applied = routes.EMPTY
        self.refused = ""

    @property
    def record_ttl(self) -> float:
        return record_ttl(self.cfg.poll_interval)

    def resync(self) -> None:
        """Read the whole table; write it to the file unless the guard refuses it."""
        table = self.store.read()
        if table == self.applied:
            self.refused = ""
            return
        problem = routes.transition_problem(self.applied, table)
        if problem is not None:
            if problem != self.refused:
                log.error("route table not applied: %s (run `frontgate route resync --force` to accept it)", problem)
            self.refused = problem
            return
        write_table(self.cfg.file, table)
        self.applied, self.refused = table, ""
        log.info("route table version %d applied: %d routes", table.version, len(table))

    def behind(self) -> bool:
        return self.store.version() != self.applied.version or bool(self.refused)

    def report(self) -> None:
        self.store.record_node(self.cfg.node, self.applied.version, self.refused, self.record_ttl)

    def holding(self) -> str:
        return f"serving the snapshot, version {self.applied.version}"

    def run(self, stop=None) -> None:
        log.info("following %s for node %s, snapshot %s (version %d, %d routes)", self.store.describe(),
                 self.cfg.node, self.cfg.file, self.applied.version, len(self.applied))
        super().run(stop)

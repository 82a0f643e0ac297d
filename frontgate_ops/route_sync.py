"""`frontgate route sync`: one per node (a supervisord program), keeps this node's route table
file in line with the fleet's table in Redis. The router and the checker follow that file, so it
is also the snapshot the node serves from while Redis is unreachable, and starts from after a
restart.

Three ways a change arrives, because pub/sub messages are lost across disconnects:
- the hint: the writer publishes the new version on PREFIX:changed;
- the poll: the version is read every poll_interval seconds;
- the resync: the whole table is read on every (re)connect, the pub/sub one included (redis-py
  resubscribes by itself after a disconnect; the subscribe confirmation tells us it did).

A table is written to the file only if it passes routes.transition_problem (no version going
backwards, no shrink by more than half unless written with --force); a refused one is logged
once and reported in this node's record, which `route status` shows.
"""
from __future__ import annotations

import logging
import time

from frontgate import routes
from frontgate.route_store import StoreError
from frontgate.route_store_file import read_table, write_table
from frontgate.route_store_redis import ERRORS, RedisStore
from frontgate.config.routes import RoutesConfig

log = logging.getLogger("route-sync")

RETRY_INTERVAL = 0.5          # seconds between reconnects while Redis is unreachable


class Syncer:
    def __init__(self, cfg: RoutesConfig):
        self.cfg = cfg
        self.store = RedisStore(cfg)
        try:
            self.applied = read_table(cfg.file)          # the snapshot: what this node serves now
        except StoreError as e:
            log.error("snapshot unreadable, starting from an empty table: %s", e)
            self.applied = routes.EMPTY
        self.refused = ""
        self._problem = ""

    @property
    def record_ttl(self) -> float:
        return 3 * self.cfg.poll_interval + 2

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

    def report(self) -> None:
        self.store.record_node(self.cfg.node, self.applied.version, self.refused, self.record_ttl)

    def run_once(self) -> None:
        """One connection's life: subscribe, resync, then follow hints and polls until an error."""
        pubsub = self.store.client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(self.store.keys.channel)
            self.resync()
            self.report()
            if self._problem:
                log.info("redis reachable again: version %d applied", self.applied.version)
                self._problem = ""
            next_poll = time.monotonic() + self.cfg.poll_interval
            while True:
                message = pubsub.get_message(timeout=max(0.0, next_poll - time.monotonic()))
                if message is not None:
                    # A hint, or a (re)subscription: after a reconnect anything may have changed.
                    self.resync()
                    self.report()
                if time.monotonic() >= next_poll:
                    if self.store.version() != self.applied.version or self.refused:
                        self.resync()
                    self.report()
                    next_poll = time.monotonic() + self.cfg.poll_interval
        finally:
            try:
                pubsub.close()
            except ERRORS:
                pass

    def run(self) -> None:
        log.info("following %s for node %s, snapshot %s (version %d, %d routes)", self.store.describe(),
                 self.cfg.node, self.cfg.file, self.applied.version, len(self.applied))
        while True:
            try:
                self.run_once()
            except (StoreError, *ERRORS) as e:
                problem = str(e)
                if problem != self._problem:
                    log.warning("redis unreachable (%s): serving the snapshot, version %d", problem,
                                self.applied.version)
                self._problem = problem
                time.sleep(RETRY_INTERVAL)

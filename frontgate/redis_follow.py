"""Following something kept in Redis, for every node of a fleet: the route table (`frontgate route
sync`) and cert-manager's tokens and certificates (cert_manager.fleet_follow).

Three ways a change arrives, because pub/sub messages are lost across disconnects:
- the hint: the writer publishes on a channel;
- the poll: a version counter is read every poll_interval seconds;
- the resync: everything is read on every (re)connect, the pub/sub one included (redis-py
  resubscribes by itself after a disconnect; the subscribe confirmation tells us it did).

A subclass says how to resync, whether the poll found it behind, and how to record the node (a
key with a short expiry, `record_ttl`, so a dead node's record goes away).
"""
from __future__ import annotations

import logging
import threading
import time

import redis

from frontgate.route_store import StoreError
from frontgate.route_store_redis import ERRORS

RETRY_INTERVAL = 0.5          # seconds between reconnects while Redis is unreachable


def record_ttl(poll_interval: float) -> float:
    """How long a node's record outlives its last poll: three polls missed, and a margin."""
    return 3 * poll_interval + 2


class Follower:
    def __init__(self, client: redis.Redis, channel: str, poll_interval: float, log: logging.Logger):
        self.client, self.channel, self.poll_interval, self.log = client, channel, poll_interval, log
        self._problem = ""

    # ---- what a subclass provides

    def resync(self) -> None:
        """Read everything and apply it."""
        raise NotImplementedError

    def behind(self) -> bool:
        """The poll: whether a resync is needed (the version moved, or the last resync failed)."""
        raise NotImplementedError

    def report(self) -> None:
        """Record this node (with an expiry of record_ttl)."""

    def holding(self) -> str:
        """What the node keeps using while Redis is unreachable, for the log."""
        return "keeping what it has"

    # ---- the loop

    def run_once(self, stop: threading.Event | None = None) -> None:
        """One connection's life: subscribe, resync, then follow hints and polls until an error."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(self.channel)
            self.resync()
            self.report()
            if self._problem:
                self.log.info("redis reachable again: %s", self.holding())
                self._problem = ""
            next_poll = time.monotonic() + self.poll_interval
            while stop is None or not stop.is_set():
                message = pubsub.get_message(timeout=max(0.0, next_poll - time.monotonic()))
                if message is not None:
                    # A hint, or a (re)subscription: after a reconnect anything may have changed.
                    self.resync()
                    self.report()
                if time.monotonic() >= next_poll:
                    if self.behind():
                        self.resync()
                    self.report()
                    next_poll = time.monotonic() + self.poll_interval
        finally:
            try:
                pubsub.close()
            except ERRORS:
                pass

    def run(self, stop: threading.Event | None = None) -> None:
        """Follow until `stop` is set, reconnecting while Redis is unreachable."""
        while stop is None or not stop.is_set():
            try:
                self.run_once(stop)
            except (StoreError, *ERRORS) as e:
                problem = str(e)
                if problem != self._problem:
                    self.log.warning("redis unreachable (%s): %s", problem, self.holding())
                self._problem = problem
                if stop is not None:
                    stop.wait(RETRY_INTERVAL)
                else:
                    time.sleep(RETRY_INTERVAL)

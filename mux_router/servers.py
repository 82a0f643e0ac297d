"""What the router knows about each server of each app: requests in flight (maxconn, leastconn),
the maxconn queue, the balancers, and passive health (refused connects, and the checker's state)."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time

from frontgate.config import App, Server
from mux_router.backends import QueueFull
from mux_router.balancer import Hashed, LeastConn, RoundRobin, for_app

log = logging.getLogger("mux-router")

MAX_QUEUE = 4096               # requests waiting for a server slot, per app; more: 503 at once
PASSIVE_RETRY = 10.0           # a passively marked-down server is tried again after this when no
                               # fresh checker state can bring it back


class ServerSlot:
    """What the router itself knows about one server of one app: requests in flight (maxconn,
    leastconn) and refused connects in a row (passive health)."""

    def __init__(self, server: Server):
        self.server = server
        self.active = 0
        self.refused_in_row = 0
        self.down_since: float | None = None       # wall clock: compared with the checker's writes

    @property
    def full(self) -> bool:
        return self.server.maxconn > 0 and self.active >= self.server.maxconn


class ServerSlots:
    """The router's part that follows its servers (a base of Router): `slots`, `balancers` and
    `queues` by app, kept across reloads for unchanged apps and servers. Needs `health` (a
    StateFollower) from the router."""

    slots: dict[str, ServerSlot]
    balancers: dict
    queues: dict[str, collections.deque]

    def _set_apps(self, apps) -> None:
        """Balancers and slots for the apps; those of unchanged apps and servers survive a reload
        (round-robin positions, counts of requests in flight, passive down marks)."""
        slots = {}
        for app in apps:
            for server in app.servers:
                key = app.server_key(server)
                slot = self.slots.get(key) or ServerSlot(server)
                slot.server = server
                slots[key] = slot
        self.slots = slots
        kinds = {"roundrobin": RoundRobin, "leastconn": LeastConn, "source": Hashed, "uri": Hashed}
        balancers = {}
        for app in apps:
            old = self.balancers.get(app.name)
            if old is not None and old.servers == app.servers and type(old) is kinds[app.balance]:
                balancers[app.name] = old
            else:
                balancers[app.name] = for_app(app, lambda s, app=app: self.slots[app.server_key(s)].active)
        self.balancers = balancers
        self.queues = {app.name: self.queues.get(app.name, collections.deque()) for app in apps}

    def server_order(self, app: App, hash_key: bytes = b"") -> list[Server]:
        balancer = self.balancers[app.name]
        is_down = functools.partial(self.is_down, app)
        if isinstance(balancer, Hashed):
            return balancer.order(hash_key, is_down)
        return balancer.order(is_down)

    def is_down(self, app: App, server: Server) -> bool:
        key = app.server_key(server)
        slot = self.slots.get(key)
        if slot is not None and slot.down_since is not None and self._still_passively_down(key, slot):
            return True
        return self.health.is_down(key)

    def _still_passively_down(self, key: str, slot: ServerSlot) -> bool:
        """A server marked down for refusing connects comes back when the checker has seen it up
        since (its `since` is later), or after PASSIVE_RETRY when the checker does not say down
        (no checker running, or it never noticed the outage)."""
        now = time.time()
        entry = self.health.entry(key)
        if entry is not None and entry.state != "up":
            return True
        if (entry is not None and entry.since > slot.down_since) or now - slot.down_since >= PASSIVE_RETRY:
            log.info("%s: back in service after being marked down for refused connects", key)
            slot.down_since, slot.refused_in_row = None, 0
            return False
        return True

    def connect_failed(self, app: App, slot: ServerSlot, refused: bool) -> None:
        if not refused or app.passive_fall == 0:
            return
        slot.refused_in_row += 1
        if slot.refused_in_row >= app.passive_fall and slot.down_since is None:
            slot.down_since = time.time()
            log.warning("%s: marked down after %d refused connects in a row", app.server_key(slot.server),
                        slot.refused_in_row)

    # ---- server slots: maxconn and the queue

    def claim_slot(self, app: App, servers: list[Server]) -> ServerSlot | None:
        """A slot on the first of `servers` below its maxconn, at once; None when all are full."""
        for server in servers:
            slot = self.slots[app.server_key(server)]
            if not slot.full:
                slot.active += 1
                return slot
        return None

    async def take_slot(self, app: App, servers: list[Server], timeout: float) -> ServerSlot:
        """A slot on the first of `servers` below its maxconn; else wait in the app's queue (FIFO)
        for one to be handed over, at most `timeout` seconds. QueueFull when none came."""
        slot = self.claim_slot(app, servers)
        if slot is not None:
            return slot
        queue = self.queues[app.name]
        if len(queue) >= MAX_QUEUE:
            raise QueueFull("queue full")
        future = asyncio.get_running_loop().create_future()
        waiter = (future, frozenset(servers))
        queue.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except BaseException as e:
            if future.done() and not future.cancelled():
                self.release_slot(app, future.result())     # handed over as we gave up: pass it on
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            if isinstance(e, TimeoutError):
                raise QueueFull("queue timeout") from None
            raise

    def release_slot(self, app: App, slot: ServerSlot) -> None:
        """The request is done with the server: hand the slot to the first waiter that can use
        this server, else free it."""
        queue = self.queues.get(app.name)
        if queue:
            for waiter in queue:
                future, servers = waiter
                if slot.server in servers and not future.done():
                    queue.remove(waiter)
                    future.set_result(slot)
                    return
        slot.active -= 1

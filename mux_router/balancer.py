"""Choosing a backend server: smooth weighted round robin (as nginx and HAProxy do it),
least connections, and hashing of the client address or the URI.

With weights 5, 1, 1 a plain weighted round robin sends a, a, a, a, a, b, c; the smooth variant
interleaves (a, a, b, a, c, a, a) so no server gets a burst. Each pick adds every candidate's
weight to its running score, takes the highest, and subtracts the total from the winner.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

from frontgate.config import Server


class RoundRobin:
    def __init__(self, servers: Sequence[Server]):
        self.servers = tuple(servers)
        self._score = [0] * len(self.servers)

    def order(self, is_down: Callable[[Server], bool] = lambda s: False) -> list[Server]:
        """The servers to try for one request, best first: this turn's pick, then the other
        servers that are up in list order after it (the caller tries them when a connect fails).
        Servers marked down or with weight 0 are left out; empty when none is left."""
        if len(self.servers) == 1:          # an app with one server (common): nothing to weigh
            server = self.servers[0]
            return [] if server.weight <= 0 or is_down(server) else [server]
        candidates = [i for i, s in enumerate(self.servers) if s.weight > 0 and not is_down(s)]
        if not candidates:
            return []
        total = 0
        best = candidates[0]
        for i in candidates:
            self._score[i] += self.servers[i].weight
            total += self.servers[i].weight
            if self._score[i] > self._score[best]:
                best = i
        self._score[best] -= total
        k = candidates.index(best)
        return [self.servers[i] for i in candidates[k:] + candidates[:k]]


class LeastConn:
    """The up server with the fewest requests in flight (relative to its weight); ties go round
    robin so that an idle farm still spreads the load."""

    def __init__(self, servers: Sequence[Server], active: Callable[[Server], int]):
        self.servers = tuple(servers)
        self._active = active
        self._next = 0

    def order(self, is_down: Callable[[Server], bool] = lambda s: False) -> list[Server]:
        n = len(self.servers)
        start = self._next
        self._next = (self._next + 1) % max(n, 1)
        rotated = [self.servers[(start + i) % n] for i in range(n)]
        candidates = [s for s in rotated if s.weight > 0 and not is_down(s)]
        # sorted() is stable: equal loads keep the rotated order.
        return sorted(candidates, key=lambda s: self._active(s) / s.weight)


class Hashed:
    """`balance source` / `balance uri`: a key (client IP, request path) always maps to the same
    server while the set of servers that are up is the same, and only keys of a server that goes
    down move (rendezvous hashing: each key ranks the servers by hash(key, server), weighted).
    When the server comes back, its keys return to it."""

    def __init__(self, servers: Sequence[Server]):
        self.servers = tuple(servers)
        self._ids = [str(s.address).encode() for s in self.servers]

    def order(self, key: bytes, is_down: Callable[[Server], bool] = lambda s: False) -> list[Server]:
        scored = []
        for server, ident in zip(self.servers, self._ids):
            if server.weight <= 0 or is_down(server):
                continue
            h = int.from_bytes(hashlib.blake2b(key + b"\0" + ident, digest_size=8).digest(), "big")
            # Weighted rendezvous: -w / ln(u), u in (0, 1), highest wins.
            u = (h + 1) / (2 ** 64 + 1)
            scored.append((-server.weight / math.log(u), server))
        scored.sort(key=lambda x: x[0], reverse=True)
        return [s for _, s in scored]


def for_app(app, active: Callable[[Server], int]) -> RoundRobin | LeastConn | Hashed:
    """A fresh balancer of the app's kind; `active` counts a server's requests in flight (leastconn)."""
    if app.balance == "leastconn":
        return LeastConn(app.servers, active)
    return RoundRobin(app.servers) if app.balance == "roundrobin" else Hashed(app.servers)

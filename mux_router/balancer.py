"""Choosing a backend server: smooth weighted round robin, as nginx and HAProxy do it.

With weights 5, 1, 1 a plain weighted round robin sends a, a, a, a, a, b, c; the smooth variant
interleaves (a, a, b, a, c, a, a) so no server gets a burst. Each pick adds every candidate's
weight to its running score, takes the highest, and subtracts the total from the winner.
"""
from __future__ import annotations

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

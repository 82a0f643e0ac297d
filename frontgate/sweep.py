"""Idle deadlines for many long-lived connections on one event-loop timer.

A timer per connection (an asyncio TimerHandle with its libuv timer) costs about half a KiB, which
thousands of idle WebSocket tunnels would hold for hours. Here a connection costs a set entry, and
moving its deadline is whatever the connection does to remember its last activity. The price is
precision: a deadline is seen up to `interval` late (a quarter of the timeout at most, a second
for long ones), which is what idle timeouts of minutes or hours can afford.
"""
from __future__ import annotations

import asyncio
from typing import Protocol


class Swept(Protocol):
    def sweep(self, now: float) -> bool:
        """Called about every `interval` with the loop's time: act on an expired deadline and
        return False to leave the sweep, or True to stay."""


def interval_for(timeout: float) -> float:
    """How often to sweep for deadlines `timeout` seconds after the last activity."""
    return min(1.0, timeout / 4)


class Sweep:
    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float):
        self.loop = loop
        self.interval = interval        # the owner may change it (a reload): the next tick uses it
        self.members: set[Swept] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, member: Swept) -> None:
        self.members.add(member)
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def discard(self, member: Swept) -> None:
        self.members.discard(member)

    def close(self) -> None:
        self.members.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        now = self.loop.time()
        # A copy: a member that expires may end others (its other side) and leave the set itself.
        for member in list(self.members):
            if member in self.members and not member.sweep(now):
                self.members.discard(member)
        if self.members:
            self._handle = self.loop.call_later(self.interval, self._tick)

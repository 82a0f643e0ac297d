"""How many ClientHellos one pass of the terminator's event loop answers (HelloTurns)."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tls_terminator.connection import ClientConnection

HELLOS_PER_PASS = 2        # ClientHellos answered per event-loop pass (see HelloTurns)


class HelloTurns:
    """At most HELLOS_PER_PASS ClientHellos are answered per pass of the event loop; the others
    wait their turn, first come first served.

    Answering a ClientHello is the expensive step of a handshake (key exchange and signature, about
    half a millisecond here), and one loop pass runs every callback that is ready. Without a limit,
    a burst of 50 new clients becomes one 25 ms pass, and every connection that is further along
    (a client's Finished, the request behind it, the router's answer) waits behind all 50, so the
    burst's first requests reach the router only after its last handshake. With the limit, passes
    stay short and those finish first; the CPU spent is the same."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_pass: int = HELLOS_PER_PASS):
        self.loop = loop
        self.per_pass = per_pass
        self.waiting: deque[ClientConnection] = deque()
        self.used = 0               # turns taken in this pass
        self.scheduled = False      # a _next_pass is due

    def take(self, conn: "ClientConnection") -> bool:
        """True: answer now. False: `conn` is queued, and its take_turn() is called later."""
        self._schedule()
        if self.used < self.per_pass and not self.waiting:
            self.used += 1
            return True
        self.waiting.append(conn)
        return False

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._next_pass)

    def _next_pass(self) -> None:
        self.scheduled = False
        self.used = 0
        while self.waiting and self.used < self.per_pass:
            conn = self.waiting.popleft()
            if not conn.closed:
                self.used += 1
                conn.take_turn()
        if self.waiting or self.used:
            self._schedule()

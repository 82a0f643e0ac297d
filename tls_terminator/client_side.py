"""What a terminator client connection does the same whether it is decrypted here
(connection.ClientConnection) or passed through (passthrough.PassthroughConnection): backpressure
both ways, pausing its reads for several reasons at once, the idle deadline, the SIGTERM drain
rule, ending with its upstream."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tls_terminator.upstream import RouterSide

if TYPE_CHECKING:
    from tls_terminator.terminator import Terminator

log = logging.getLogger("tls-terminator")

NOT_PAUSED: frozenset[str] = frozenset()
DRAIN_QUIET = 1.0          # SIGTERM: a connection this long without traffic may be closed ...




class ClientSide(asyncio.Protocol):
    """What a client connection does the same whether it is decrypted here (ClientConnection) or
    passed through (PassthroughConnection): backpressure both ways, pausing its reads for several
    reasons at once, ending with its upstream. Subclasses set the attributes used here."""

    terminator: "Terminator"
    transport: asyncio.Transport | None
    upstream: "RouterSide | None"
    connect_task: asyncio.Task | None
    timer: asyncio.TimerHandle | None = None     # the handshake's (idle deadlines are swept: sweep())
    idle_timeout: float
    last_activity: float
    paused_for: frozenset[str] = NOT_PAUSED     # why the client's reading is paused
    client_done: bool
    closed: bool
    bytes_in = 0        # from / to the client, for the stats (added to the totals when it ends)
    bytes_out = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end_deadlines()
        if self.connect_task is not None:
            self.connect_task.cancel()
        if self.upstream is not None:
            # Nobody is left to read the upstream's answer.
            self.upstream.close(abort=exc is not None)
        self.terminator.connection_ended(self)

    def pause_writing(self) -> None:
        # The client reads slower than the upstream sends: stop reading from the upstream.
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def pause_client_reading(self, reason: str) -> None:
        if not self.paused_for and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused_for = self.paused_for | {reason}

    def resume_client_reading(self, reason: str) -> None:
        # Pauses are rare and short; a connection not paused shares one empty frozenset.
        self.paused_for = (self.paused_for - {reason}) or NOT_PAUSED
        if (not self.paused_for and not self.client_done and self.transport is not None
                and not self.transport.is_closing()):
            self.transport.resume_reading()

    def _end_deadlines(self) -> None:
        """No more handshake timer, and out of the idle sweep."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.terminator.idle_sweep.discard(self)

    # ---- the idle deadline, checked by the terminator's idle sweep (frontgate.sweep)

    def sweep(self, now: float) -> bool:
        if self.closed:
            return False
        if now - self.last_activity < self.idle_timeout:
            return True
        self.close_idle()
        return False

    def close_idle(self) -> None:
        """No traffic either way for idle_timeout."""
        self.close()

    def close(self, abort: bool = False) -> None:
        """Close both sides; a plain close still delivers what is queued for the client."""
        if self.closed:
            return
        self.closed = True
        self._end_deadlines()
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        if self.upstream is not None:
            self.upstream.close(abort=abort)


def is_drain_idle(last_activity: float, awaiting_answer: bool, now: float) -> bool:
    """During a SIGTERM drain: may a connection be closed without cutting anything short?"""
    return not awaiting_answer and now - last_activity >= DRAIN_QUIET

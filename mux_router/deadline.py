"""A lazily re-armed timer, for the deadlines a connection moves on every request."""
from __future__ import annotations

import asyncio


class Deadline:
    """One lazily re-armed timer: moving a deadline costs an assignment; the pending timer, when it
    fires early, re-arms itself for the new time (per-request timers would cost a heap operation
    each)."""

    __slots__ = ("_loop", "_callback", "when", "_handle", "_handle_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback):
        self._loop, self._callback = loop, callback
        self.when: float | None = None
        self._handle = None
        self._handle_at = 0.0

    def set(self, delay: float) -> None:
        when = self._loop.time() + delay
        self.when = when
        if self._handle is None or self._handle_at > when:
            if self._handle is not None:
                self._handle.cancel()
            self._handle_at = when
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        self.when = None

    def cancel(self) -> None:
        """For good: the callback (usually a method of the owner) is dropped too, so that no
        reference cycle keeps the owner for the garbage collector."""
        self.when = None
        self._callback = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if self.when is None or self._callback is None:
            return
        if self._loop.time() < self.when:
            self._handle_at = self.when
            self._handle = self._loop.call_at(self.when, self._fire)
            return
        self.when = None
        self._callback()


class ExchangeDeadlines:
    """The two timers of an exchange machine's `io` (`timer`: the client's, `server_timer`: the
    backend's), as the machine arms them: seconds, or None to clear. Shared by its drivers."""

    def client_deadline(self, seconds: float | None) -> None:
        if seconds is None:
            self.timer.clear()
        else:
            self.timer.set(seconds)

    def server_deadline(self, seconds: float | None) -> None:
        if seconds is None:
            self.server_timer.clear()
        else:
            self.server_timer.set(seconds)

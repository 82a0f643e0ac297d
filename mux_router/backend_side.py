"""The backend half of an exchange's `io`: one home for attaching the backend connection the
dispatch found, writing to it, pausing it, retrying on a fresh one and giving it back. Shared by
the drivers of the exchange machine: an HTTP/1.1 client connection (client.py) and an HTTP/2
stream (h2_stream.py). The driver has `router`, `exchange`, `write_paused` (the client does not
take bytes now) and `_reading(on)` (pause or resume what the client sends)."""
from __future__ import annotations

import asyncio

from mux_router import backends


class BackendSide:

    def _init_backend_side(self) -> None:
        self.backend: backends.BackendConnection | None = None
        self.app = self.servers = self.slot = None     # the backend's app, servers in order, slot
        self.waiting: asyncio.Task | None = None    # a dispatch that waits (queue, connect)
        self._paused_by: set[str] = set()           # why the client's reading is paused

    def to_backend(self, data: bytes) -> None:
        self.backend.transport.write(data)

    def dispatch(self, app, hash_key: bytes) -> None:
        backends.dispatch(self.router, self, app, hash_key)

    def attach(self, conn: backends.BackendConnection, app, servers, slot) -> None:
        """The backend connection (and server slot) the exchange's request goes on; `servers`: the
        balancer's order, for a retry."""
        self.backend, self.app, self.servers, self.slot = conn, app, servers, slot
        conn.client = self
        if self.write_paused:
            conn.transport.pause_reading()

    def redo_fresh(self) -> None:
        conn, self.backend = self.backend, None
        conn.client = None
        conn.abort()
        backends.redo_fresh(self.router, self, self.app, self.servers, self.slot)

    def release_backend(self, reusable: bool) -> None:
        conn, self.backend = self.backend, None
        if conn is not None:
            if reusable and self.write_paused:
                conn.transport.resume_reading()
            self.router.backends.release(conn, reusable)
            if "backend" in self._paused_by:
                self.client_reading(True, "backend")
        self.router.release_slot(self.app, self.slot)
        self.app = self.servers = self.slot = None

    def backend_reading(self, on: bool) -> None:
        if self.backend is not None:
            if on:
                self.backend.transport.resume_reading()
            else:
                self.backend.transport.pause_reading()

    def backend_write_paused(self, paused: bool) -> None:
        """The backend takes the request body slower than the client sends it."""
        self.client_reading(not paused, "backend")
        self.exchange.backend_write_paused(paused)

    def client_reading(self, on: bool, why: str = "buffer") -> None:
        paused = self._paused_by
        was = bool(paused)
        if on:
            paused.discard(why)
        else:
            paused.add(why)
        if was != bool(paused):
            self._reading(not paused)

    def stop_waiting(self) -> None:
        """The client is gone: a dispatch still waiting gives its server slot back."""
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None

"""The router's WebSocket keepalive (`tunnel_ping`): when a tunnel's client has sent nothing for
`interval` seconds, the router sends it a ping frame (between two of the backend's frames, never
inside one); a client that has not answered with a pong `interval` seconds later is gone (a phone
that lost its network holds a tunnel for the whole `tunnel` timeout otherwise), and the tunnel is
closed. The client's pong to our ping is taken out of its stream; every other frame, the
backend's pings and the client's answers to them included, passes untouched.

tunnel.Tunnel calls in here (its one hook); frame parsing is ws_frames.
"""
from __future__ import annotations

from mux_router.ws_frames import FrameStream, ping_frame, ping_token

DEAD = "the client did not answer the router's ping"


class Keepalive:
    __slots__ = ("interval", "from_client", "to_client", "heard", "pinged")

    def __init__(self, interval: float, now: float, client_sent: bytes = b"", backend_sent: bytes = b""):
        """`client_sent`, `backend_sent`: what already went through before the tunnel took over
        (the bytes after the two heads), so that frame boundaries are counted from the start."""
        self.interval = interval
        self.from_client = FrameStream(set())
        self.to_client = FrameStream()
        self.from_client.feed(client_sent)
        self.to_client.feed(backend_sent)
        self.heard = now                  # when the client last sent anything
        self.pinged: float | None = None  # when our unanswered ping went out

    def client_data(self, data: bytes, now: float) -> bytes:
        """The client's bytes to pass to the backend: without the pongs that answer us."""
        self.heard = now
        before = self.from_client.pongs
        data = self.from_client.feed(data)
        if self.from_client.pongs != before:
            self.pinged = None
            self.from_client.swallow.clear()
        return data

    def backend_data(self, data: bytes) -> None:
        self.to_client.feed(data)

    def due(self, now: float) -> bytes | str | None:
        """On the tunnel's sweep: a ping frame to write to the client, DEAD, or None."""
        if self.pinged is not None:
            return DEAD if now - self.pinged >= self.interval else None
        if now - self.heard < self.interval or not self.to_client.at_boundary:
            return None
        token = ping_token()
        self.from_client.swallow.add(token)
        self.pinged = now
        return ping_frame(token)


def ping_interval(config, app) -> float:
    """The app's tunnel_ping, else [timeouts]; 0: off."""
    return app.tunnel_ping if app.tunnel_ping is not None else config.timeouts.tunnel_ping

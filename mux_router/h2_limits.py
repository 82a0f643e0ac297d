"""The bounds of one HTTP/2 client connection, and the accounting of what a client may send too
often: pure (the clock is passed in), unit-tested without sockets.

What the h2 library bounds by our SETTINGS (a breach is a connection error, GOAWAY):
MAX_CONCURRENT_STREAMS, the header list size (HPACK decoding stops past it), the HPACK dynamic
table size, and CONTINUATION frames (at most 64 per header block). What is counted here, each
closed with GOAWAY ENHANCE_YOUR_CALM past its budget: streams the client resets before their
response ended (rapid reset, CVE-2023-44487) and SETTINGS / PING frames (floods that make the
server queue acknowledgements). A budget is a token bucket: a burst of `burst`, refilled at
`per_second`, so a long-lived browser connection that resets a stream now and then never runs
out while a flood does within its burst.
"""
from __future__ import annotations

MAX_CONCURRENT_STREAMS = 100
MAX_HEADER_LIST_SIZE = 64 * 1024       # decoded, as RFC 9113 6.5.2 counts it
HEADER_TABLE_SIZE = 4096               # the HPACK dynamic table the client may use
INITIAL_WINDOW_SIZE = 256 * 1024       # per stream: request body bytes a stream may have in flight
CONNECTION_WINDOW = 1024 * 1024        # all streams together
MAX_FRAME_SIZE = 16 * 1024
RESET_BURST, RESETS_PER_SECOND = 200, 20.0
CONTROL_BURST, CONTROL_PER_SECOND = 100, 10.0      # SETTINGS and PING frames


class Budget:
    """A token bucket: `spend(now)` is False once the client has used up its burst faster than
    the refill."""

    __slots__ = ("burst", "per_second", "tokens", "at")

    def __init__(self, burst: float, per_second: float, now: float):
        self.burst, self.per_second = burst, per_second
        self.tokens, self.at = float(burst), now

    def spend(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
        self.at = now
        if tokens < 1:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True


class ConnectionLimits:
    """Per connection: `reset(now)` for each stream the client reset early, `control(now)` for each
    SETTINGS or PING; False means the client is past its budget (the reason is in `exceeded`)."""

    def __init__(self, now: float):
        self.resets = Budget(RESET_BURST, RESETS_PER_SECOND, now)
        self.controls = Budget(CONTROL_BURST, CONTROL_PER_SECOND, now)
        self.exceeded = ""

    def reset(self, now: float) -> bool:
        if self.resets.spend(now):
            return True
        self.exceeded = "too many streams reset by the client (rapid reset)"
        return False

    def control(self, now: float) -> bool:
        if self.controls.spend(now):
            return True
        self.exceeded = "too many SETTINGS or PING frames"
        return False

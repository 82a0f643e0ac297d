"""A bounded HTTP/2 load for the zero-drop test: client threads on 127.0.0.1, each with one h2
connection through the whole pipeline and several streams in flight, counting every request that
does not get a 200. Like tests/load.Load, with HTTP/2's own rule for retries instead of HTTP/1.1's
(RFC 9113 6.8): after a GOAWAY no new stream goes on that connection; the streams it promised
(up to its last stream id) are read to their end; those above it, or reset with REFUSED_STREAM,
were never processed and are sent again on a new connection (counted, not failed). A connection
that closes without a GOAWAY covering its streams loses them: errors."""
from __future__ import annotations

import collections
import ssl
import threading
import time

from tests.h2client import H2Client
from tests.load import MAX_SECONDS, Load


class H2Load(Load):
    """Load's counting and threads, with h2 clients (Load.__init__ would make HTTP/1.1 ones)."""

    def __init__(self, fg, clients: int = 3, streams: int = 4):
        self.fg = fg
        self.streams = streams
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.retried = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.threads = [threading.Thread(target=self.client, args=(i,)) for i in range(clients)]

    def count_retry(self) -> None:
        with self.lock:
            self.retried += 1

    def connect(self, host: str) -> H2Client:
        return H2Client.over_tls(self.fg.tls_port, host, self.fg.client_context(), past_goaway=True)

    def client(self, i: int) -> None:
        host = ("maps.localhost", "coltrane.localhost")[i % 2]
        deadline = time.monotonic() + MAX_SECONDS
        again: list[str] = []           # paths refused by a GOAWAY: sent again on a new connection
        n, conn, inflight = 0, None, {}
        while time.monotonic() < deadline and (not self.stop.is_set() or again):
            if conn is None:
                try:
                    conn, inflight = self.connect(host), {}
                except (OSError, ssl.SSLError) as e:
                    self.count(f"connect: {type(e).__name__}: {e}")
                    time.sleep(0.05)
                    continue
            try:
                while conn.goaway is None and len(inflight) < self.streams and (again or not self.stop.is_set()):
                    path = again.pop() if again else f"/h2/{i}/{n}"
                    n += 1
                    inflight[conn.request(host, path)] = path
                open_ = conn.read_once(10)
            except (OSError, ssl.SSLError):
                # The server closed while we were sending (a write cannot wait for the GOAWAY that
                # came first): read what it sent before deciding what was lost.
                open_ = False
                read_rest(conn)
            for sid, path in list(inflight.items()):
                r = conn.responses[sid]
                if r.ended and r.headers:
                    self.count(None if r.status == 200 else f"HTTP {r.status}")
                elif conn.refused(sid):
                    again.append(path)
                    self.count_retry()
                elif r.reset is not None:
                    self.count(f"stream reset with {r.reset}")
                else:
                    continue
                del inflight[sid]
            if not open_ or (conn.goaway is not None and not inflight) or (self.stop.is_set() and not inflight
                                                                            and not again):
                for path in inflight.values():
                    self.count(f"lost on a connection closed without a GOAWAY covering it: {path}")
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def read_rest(conn: H2Client) -> None:
    """What the server sent before it closed (its GOAWAY, the last responses)."""
    try:
        while conn.read_once(2):
            pass
    except OSError:
        pass

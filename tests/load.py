"""A bounded HTTPS load for the zero-drop tests: client threads on 127.0.0.1 through the whole
pipeline, counting every request that does not get a 200."""
from __future__ import annotations

import collections
import http.client
import threading
import time
from typing import Protocol

MAX_SECONDS = 90             # hard bound on the whole load


class Connector(Protocol):
    def connect(self, host: str) -> http.client.HTTPSConnection:
        """A TLS connection to the terminator, with `host` as the SNI."""


class Load:
    """Client threads on 127.0.0.1: `fresh` ones open a TLS connection per request, `keepalive`
    ones reuse theirs. A keep-alive connection the server closes while idle is retried once on a
    new connection, as every HTTP client does for an idempotent request that got no response byte
    (RFC 9112 9.3.1); those are counted, not failed. Anything else that is not a 200 is an error."""

    def __init__(self, fg: Connector, fresh: int = 4, keepalive: int = 2):
        self.fg = fg
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.retried = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.threads = [threading.Thread(target=self.fresh_client, args=(i,)) for i in range(fresh)]
        self.threads += [threading.Thread(target=self.keepalive_client, args=(i,)) for i in range(keepalive)]

    def host(self, i: int) -> str:
        return ("maps.localhost", "coltrane.localhost")[i % 2]

    def count(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            else:
                self.errors[error] += 1

    def fresh_client(self, i: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            host = self.host(i)
            try:
                conn = self.fg.connect(host)
                conn.request("GET", f"/fresh/{i}", headers={"Host": host, "Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                self.count(None if resp.status == 200 else f"HTTP {resp.status}")
            except Exception as e:
                self.count(f"fresh connection: {type(e).__name__}: {e}")

    def keepalive_client(self, i: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        conn, used = None, False
        while not self.stop.is_set() and time.monotonic() < deadline:
            host = self.host(i)
            for attempt in (1, 2):
                try:
                    if conn is None:
                        conn, used = self.fg.connect(host), False
                    conn.request("GET", f"/keepalive/{i}", headers={"Host": host})
                    resp = conn.getresponse()
                    resp.read()
                    self.count(None if resp.status == 200 else f"HTTP {resp.status}")
                    used = True
                    if resp.will_close:
                        conn.close()
                        conn = None
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                    conn.close()
                    was_reused, conn = used, None
                    if attempt == 1 and was_reused:
                        with self.lock:
                            self.retried += 1
                        continue
                    self.count(f"keep-alive: {type(e).__name__}: {e}")
                    break
                except Exception as e:
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.count(f"keep-alive: {type(e).__name__}: {e}")
                    break
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)

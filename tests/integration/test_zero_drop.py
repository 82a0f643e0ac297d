"""The zero-drop proof: a bounded load through the whole pipeline under the real supervisord (two
terminator and two router workers) while the operator runs `frontgate reload` with changed routes,
a rolling restart of the router and one of the terminator. Every request must succeed."""
from __future__ import annotations

import collections
import http.client
import threading
import time

import pytest

from tests.supervised import Supervised, supervised_pipeline

LOAD_SECONDS_AFTER = 2.0     # load keeps running this long after the last operation
MAX_SECONDS = 90             # hard bound on the whole load


@pytest.fixture
def fg(tmp_path):
    yield from supervised_pipeline(tmp_path, router_link="tcp")     # test_ops runs the shipped unix socket


class Load:
    """Client threads on 127.0.0.1: `fresh` ones open a TLS connection per request, `keepalive`
    ones reuse theirs. A keep-alive connection the server closes while idle is retried once on a
    new connection, as every HTTP client does for an idempotent request that got no response byte
    (RFC 9112 9.3.1); those are counted, not failed. Anything else that is not a 200 is an error."""

    def __init__(self, fg: Supervised, fresh: int = 4, keepalive: int = 2):
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


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reload_and_rolling_restarts_drop_no_request(fg: Supervised):
    timeline = []
    started = time.monotonic()

    def step(what: str, *args: str) -> None:
        t0 = time.monotonic()
        r = fg.frontgate(*args)
        timeline.append(f"{t0 - started:5.1f}s  {what} ({time.monotonic() - t0:.1f}s)")
        assert r.returncode == 0, f"{what}: {r.stdout}{r.stderr}"

    pids = {g: fg.pids(g) for g in ("mux-router", "tls-terminator")}
    with Load(fg) as load:
        time.sleep(2)
        fg.extra_hosts = ["karten.localhost"]
        (fg.configs / "mux-router.toml").write_text(fg.router_toml())
        step("frontgate reload (routes changed)", "reload")
        assert fg.get("karten.localhost")[0] == 200
        time.sleep(1)
        step("frontgate restart mux-router", "restart", "mux-router")
        time.sleep(1)
        step("frontgate restart tls-terminator", "restart", "tls-terminator")
        time.sleep(LOAD_SECONDS_AFTER)
    elapsed = time.monotonic() - started
    total = load.ok + sum(load.errors.values())
    print(f"\nzero-drop load: {elapsed:.1f}s, {total} requests ({total / elapsed:.0f}/s), {load.ok} ok, "
          f"{sum(load.errors.values())} failed, {load.retried} idle keep-alive closes retried")
    for line in timeline:
        print("  " + line)
    for error, n in load.errors.most_common():
        print(f"  {n} x {error}")
    assert all(a != b for g in pids for a, b in zip(pids[g], fg.pids(g))), "every worker was restarted"
    assert load.ok > 100
    assert not load.errors, dict(load.errors)

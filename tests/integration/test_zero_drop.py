"""The zero-drop proof: a bounded load through the whole pipeline under the real supervisord (two
terminator and two router workers) while the operator runs `frontgate reload` with changed routes,
a rolling restart of the router and one of the terminator. Every request must succeed, from
HTTP/1.1 clients (tests/load.py) and from HTTP/2 clients (tests/h2_load.py) alike."""
from __future__ import annotations

import time

import pytest

from tests.h2_load import H2Load
from tests.load import Load
from tests.supervised import Supervised, supervised_pipeline

LOAD_SECONDS_AFTER = 2.0     # load keeps running this long after the last operation


@pytest.fixture
def fg(tmp_path):
    yield from supervised_pipeline(tmp_path, router_link="tcp")     # test_ops runs the shipped unix socket


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("load_kind", [Load, H2Load], ids=["http1", "h2"])
def test_reload_and_rolling_restarts_drop_no_request(fg: Supervised, load_kind):
    timeline = []
    started = time.monotonic()

    def step(what: str, *args: str) -> None:
        t0 = time.monotonic()
        r = fg.frontgate(*args)
        timeline.append(f"{t0 - started:5.1f}s  {what} ({time.monotonic() - t0:.1f}s)")
        assert r.returncode == 0, f"{what}: {r.stdout}{r.stderr}"

    pids = {g: fg.pids(g) for g in ("mux-router", "tls-terminator")}
    with load_kind(fg) as load:
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
          f"{sum(load.errors.values())} failed, {load.retried} retried (HTTP/1.1: idle keep-alive closes; h2: streams a GOAWAY refused)")
    for line in timeline:
        print("  " + line)
    for error, n in load.errors.most_common():
        print(f"  {n} x {error}")
    assert all(a != b for g in pids for a, b in zip(pids[g], fg.pids(g))), "every worker was restarted"
    assert load.ok > 100
    assert not load.errors, dict(load.errors)

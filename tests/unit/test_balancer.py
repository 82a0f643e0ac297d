"""mux_router.balancer: smooth weighted round robin over the servers that are up."""
from __future__ import annotations

from collections import Counter

from frontgate.config import Address, Server
from mux_router.balancer import Hashed, LeastConn, RoundRobin


def servers(*weights):
    return [Server(Address.parse(f"127.0.0.1:{1000 + i}"), weight=w) for i, w in enumerate(weights)]


def names(seq):
    return [s.address.port - 1000 for s in seq]


def test_equal_weights_alternate_and_give_retry_order():
    a, b, c = servers(1, 1, 1)
    rr = RoundRobin([a, b, c])
    assert [names(rr.order()) for _ in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_smooth_weighting():
    rr = RoundRobin(servers(5, 1, 1))
    picks = [names(rr.order())[0] for _ in range(7)]
    assert picks == [0, 0, 1, 0, 2, 0, 0]          # nginx's example: interleaved, not 0 x5 in a row
    counts = Counter(names(rr.order())[0] for _ in range(700))
    assert counts == {0: 500, 1: 100, 2: 100}


def test_down_and_zero_weight_servers_are_skipped():
    s = servers(1, 1, 0)
    rr = RoundRobin(s)
    down = {s[0]}
    assert [names(rr.order(lambda x: x in down)) for _ in range(3)] == [[1]] * 3
    assert rr.order(lambda x: True) == []
    # Back up: both share the traffic again.
    assert Counter(names(rr.order())[0] for _ in range(10)) == {0: 5, 1: 5}
    assert RoundRobin(servers(0)).order() == []
    one = RoundRobin(servers(1))            # the one-server shortcut: up or down, nothing else
    assert [names(one.order()) for _ in range(2)] == [[0], [0]] and one.order(lambda x: True) == []


def test_leastconn_prefers_the_least_loaded_and_rotates_ties():
    s = servers(1, 1, 2)
    active = {a.address.port: 0 for a in s}
    lc = LeastConn(s, lambda x: active[x.address.port])
    assert Counter(names(lc.order())[0] for _ in range(6)) == {0: 2, 1: 2, 2: 2}     # idle: rotate
    active.update({1000: 3, 1001: 1, 1002: 4})                  # per weight: 3, 1, 2
    assert names(lc.order()) == [1, 2, 0]
    assert names(lc.order(lambda x: x.address.port == 1001)) == [2, 0]


def test_hash_is_stable_and_only_a_down_servers_keys_move():
    s = servers(1, 1, 1, 1)
    h = Hashed(s)
    keys = [f"10.0.0.{i}".encode() for i in range(400)]
    first = {k: names(h.order(k))[0] for k in keys}
    assert first == {k: names(h.order(k))[0] for k in keys}      # same key, same server
    assert all(60 < n < 140 for n in Counter(first.values()).values())   # spread
    down = {s[2]}
    moved = {k: names(h.order(k, lambda x: x in down))[0] for k in keys}
    assert all(moved[k] == first[k] for k in keys if first[k] != 2)   # only server 2's keys moved
    assert all(moved[k] != 2 for k in keys)
    assert {k: names(h.order(k))[0] for k in keys} == first       # back up: back to the same server


def test_hash_weights():
    h = Hashed(servers(3, 1))
    counts = Counter(names(h.order(str(i).encode()))[0] for i in range(2000))
    assert 1350 < counts[0] < 1650

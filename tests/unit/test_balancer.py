"""mux_router.balancer: smooth weighted round robin over the servers that are up."""
from __future__ import annotations

from collections import Counter

from frontgate.config import Address, Server
from mux_router.balancer import RoundRobin


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

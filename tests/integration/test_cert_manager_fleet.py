"""cert-manager in a fleet: three nodes (router + terminator + cert-manager each, on 127.0.0.1,
127.0.0.2 and 127.0.0.3) whose routers' route store is one real redis-server, and a real Pebble
whose http-01 validation goes to node 2's router only.

- Node 1 orders a name that only it lists: node 2 has the tokens (mirrored from Redis) and
  answers the CA, so the order succeeds although node 2 never ordered; the tokens are gone from
  every node and Redis afterwards. Nodes 2 and 3, given the name, install node 1's certificate
  from Redis and order nothing.
- All three get a second name at once: exactly one orders it (under its lock), the other two
  install it; every terminator serves both names, verified against Pebble's root.
"""
from __future__ import annotations

import re
import signal

import pytest
import redis

from cert_manager.fleet_rules import FleetKeys
from tests.acme_stack import Stack, metric
from tests.helpers import daemon_output, free_port, wait_until
from tests.pebble import Pebble, require_pebble
from tests.redis_fixtures import RedisServer

FIRST, SECOND = "shop.frontgate.test", "blog.frontgate.test"
IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
ROUTES_KEY = "frontgate:routes"
CHALLENGE = re.compile(r"GET /\.well-known/acme-challenge/[A-Za-z0-9_-]+ ")


def routes_table(store: str, node: str) -> str:
    return f"""
[routes]
store = "{store}"
file = "routes.json"
poll_interval = 1
node = "{node}"
"""


def counts(stack: Stack, name: str) -> dict[str, float]:
    text = stack.metrics()
    return {family: metric(text, family, name)
            for family in ("issued_total", "renewed_total", "fleet_installs_total", "failures_total")}


def reload(stack: Stack, names: list[str]) -> None:
    stack.write_cert_manager(names)
    stack.procs["cert-manager"].send_signal(signal.SIGHUP)


@pytest.mark.timeout(240)
def test_one_node_orders_every_node_answers_and_serves(tmp_path):
    require_pebble()
    plain_port = free_port()            # the same port on the three addresses: the CA knows one
    server = RedisServer(tmp_path / "redis").start()
    pebble = Pebble(tmp_path / "pebble", plain_port, validation_ip=IPS[1]).start()
    nodes = [Stack(tmp_path / ip, pebble, plain_port, ip=ip, names=[],
                   routes=routes_table(server.url, ip)) for ip in IPS]
    client = redis.Redis.from_url(server.url, decode_responses=True)
    keys = FleetKeys(ROUTES_KEY)
    try:
        # Nodes 2 and 3 first, listing no name; their followers record themselves in Redis.
        for node in nodes[1:]:
            node.start()
        wait_until(lambda: {keys.node(ip) for ip in IPS[1:]} <= set(client.keys(keys.node_prefix + "*")),
                   timeout=20, interval=0.2, what="nodes 2 and 3 following the fleet")
        # 1. Node 1 lists FIRST and orders it; Pebble validates at node 2, which never ordered.
        nodes[0].write_cert_manager([FIRST])
        nodes[0].start()
        first = wait_until(lambda: nodes[0].installed_serial(FIRST), timeout=60, interval=0.2,
                           what="node 1's certificate")
        assert counts(nodes[0], FIRST) == {"issued_total": 1, "renewed_total": 0, "fleet_installs_total": 0,
                                           "failures_total": 0}
        routers = [daemon_output(n.procs["router"]) for n in nodes]
        assert re.search(r"<acme-challenge>.* 200 .*" + CHALLENGE.pattern, routers[1]), routers[1]
        assert not CHALLENGE.search(routers[0]) and not CHALLENGE.search(routers[2])
        # The tokens went to every node and are gone from all (and from Redis) now the order ended.
        wait_until(lambda: all(not list(n.challenges.iterdir()) for n in nodes), timeout=10, interval=0.2,
                   what="the tokens removed on every node")
        assert client.hlen(keys.tokens) == 0
        assert client.get(keys.lock(FIRST)) is None          # released by its owner
        assert client.hget(keys.cert(FIRST), "node") == IPS[0]
        # 2. Nodes 2 and 3 list FIRST too: they install node 1's certificate, and order nothing.
        for node in nodes[1:]:
            reload(node, [FIRST])
        for node in nodes[1:]:
            wait_until(lambda: node.installed_serial(FIRST) == first, timeout=20, interval=0.2,
                       what=f"{node.ip} installing the fleet's certificate")
            assert node.cert_file(FIRST).stat().st_mode & 0o777 == 0o600
            wait_until(lambda: counts(node, FIRST)["fleet_installs_total"] == 1, timeout=10, interval=0.2,
                       what=f"{node.ip} counting it")
            assert counts(node, FIRST) == {"issued_total": 0, "renewed_total": 0, "fleet_installs_total": 1,
                                           "failures_total": 0}
        # 3. All three list SECOND at once: exactly one orders it, the others install it.
        for node in nodes:
            reload(node, [FIRST, SECOND])
        serials = [wait_until(lambda: node.installed_serial(SECOND), timeout=60, interval=0.2,
                              what=f"{node.ip}: the second certificate") for node in nodes]
        assert len(set(serials)) == 1, serials
        wait_until(lambda: sum(counts(n, SECOND)["fleet_installs_total"] for n in nodes) == 2, timeout=10,
                   interval=0.2, what="two nodes counting the installed certificate")
        per_node = [counts(n, SECOND) for n in nodes]
        assert sum(c["issued_total"] for c in per_node) == 1, per_node
        assert sum(c["failures_total"] + c["renewed_total"] for c in per_node) == 0, per_node
        issuer = next(n for n, c in zip(nodes, per_node) if c["issued_total"] == 1)
        assert client.hget(keys.cert(SECOND), "node") == issuer.ip
        # Every terminator serves both, and the chains verify against Pebble's root.
        root = pebble.root_pem()
        for node in nodes:
            for name, serial in ((FIRST, first), (SECOND, serials[0])):
                served = wait_until(lambda: (s := node.s_client(root, name))[0] == serial and s, timeout=15,
                                    interval=0.3, what=f"{node.ip} serving {name}")
                assert served[1] == "Verify return code: 0 (ok)", (node.ip, name, served)
        # Two orders in all: one per name.
        assert sum(counts(n, name)["issued_total"] for n in nodes for name in (FIRST, SECOND)) == 2
    finally:
        logs = {n.ip: n.stop() for n in nodes}
        pebble.stop()
        server.stop()
    assert pebble.orders_logged() == 2          # Pebble's own count: one order per name
    for ip, log in logs.items():
        assert "Traceback" not in log["cert-manager"], (ip, log["cert-manager"])


@pytest.mark.slow          # 30 s of 40-second certificates; the first order in a fleet is in make test
@pytest.mark.timeout(180)
def test_renewal_in_a_fleet_is_one_order_installed_everywhere(tmp_path):
    """40-second certificates, two nodes listing the name from the start: each order (the first,
    then the renewal when a third of the lifetime is left) is made by one node and installed by
    the other, which orders nothing meanwhile."""
    require_pebble()
    plain_port = free_port()
    server = RedisServer(tmp_path / "redis").start()
    pebble = Pebble(tmp_path / "pebble", plain_port, validity=40, validation_ip=IPS[1]).start()
    nodes = [Stack(tmp_path / ip, pebble, plain_port, ip=ip, names=[FIRST],
                   routes=routes_table(server.url, ip)) for ip in IPS[:2]]
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        # The node the CA validates at first: an order before its router listens would fail (rightly).
        nodes[1].start()
        wait_until(lambda: client.exists(FleetKeys(ROUTES_KEY).node(IPS[1])), timeout=20, interval=0.2,
                   what="node 2 following the fleet")
        nodes[0].start()
        serials = lambda: {n.installed_serial(FIRST) for n in nodes}  # noqa: E731
        first = wait_until(lambda: len(s := serials()) == 1 and None not in s and s, timeout=60, interval=0.2,
                           what="one certificate on both nodes")
        wait_until(lambda: len(s := serials()) == 1 and s != first and None not in s, timeout=60, interval=0.2,
                   what="the renewed certificate on both nodes")

        def orders_and_installs() -> bool:
            per_node = [counts(n, FIRST) for n in nodes]
            orders = sum(c["issued_total"] + c["renewed_total"] for c in per_node)
            return orders >= 2 and orders == sum(c["fleet_installs_total"] for c in per_node) and per_node

        per_node = wait_until(orders_and_installs, timeout=10, interval=0.2,
                              what="each order installed once by the other node")
        assert sum(c["issued_total"] for c in per_node) == 1, per_node
        assert sum(c["failures_total"] for c in per_node) == 0, per_node
    finally:
        for n in nodes:
            n.stop()
        pebble.stop()
        server.stop()
    orders = sum(c["issued_total"] + c["renewed_total"] for c in per_node)
    assert pebble.orders_logged() >= orders

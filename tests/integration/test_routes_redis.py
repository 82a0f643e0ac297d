"""One route table for a fleet through a real redis-server: three router nodes on 127.0.0.1,
127.0.0.2 and 127.0.0.3, each with its own `frontgate route sync`. The issue asks for convergence
"within 1 second"; the waits below are bounded loops that fail after CONVERGE seconds (generous,
for a loaded 2-core machine), and no test asserts a duration."""
from __future__ import annotations

import json
import subprocess
import threading

import pytest

from frontgate import routes
from frontgate.route_store import StoreError
from frontgate.route_store_redis import RedisStore
from frontgate.config.routes import RoutesConfig
from tests.helpers import daemon_output, stop_daemon, wait_until
from tests.redis_fixtures import RedisServer, Sentinel
from tests.routes_fixtures import RouterNode, backends, frontgate, route_sync  # noqa: F401 (fixture)

CONVERGE = 5.0           # seconds: the bound of every convergence wait (the target: 1 s)
POLL = 1.0               # [routes] poll_interval of the nodes
IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


class Fleet:
    def __init__(self, tmp_path, store: str, backends):
        self.store = store
        self.nodes = [RouterNode(tmp_path / ip, ip, backends["static"].address, store=store, poll=POLL, node=ip)
                      for ip in IPS]
        self.syncers = {}

    def start(self, node: RouterNode) -> None:
        self.syncers[node.ip] = route_sync(node.configs)
        node.start()

    def stop(self, node: RouterNode) -> None:
        stop_daemon(self.syncers.pop(node.ip))
        node.stop()

    def all_serve(self, host: str, name: str, path: str = "/") -> bool:
        return all(n.serves(host, path, name) for n in self.nodes)

    def none_serve(self, host: str) -> bool:
        return all(n.get(host)[0] == 404 for n in self.nodes)

    def route(self, *args: str) -> subprocess.CompletedProcess:
        return frontgate(self.nodes[0].configs, "route", *args)

    def store_client(self) -> RedisStore:
        return RedisStore(RoutesConfig(file=self.nodes[0].table, store=self.store, node="test"))


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def fleet(tmp_path, redis_server, backends):
    f = Fleet(tmp_path, redis_server.url, backends)
    try:
        for node in f.nodes:
            f.start(node)
        yield f
    finally:        # a node that failed to start must not leave the others' programs running
        for node in list(f.nodes):
            if node.ip in f.syncers:
                f.stop(node)


def test_a_route_added_on_one_node_serves_on_all_three_and_rm_stops_it(fleet, backends):
    r = fleet.route("add", "blog.example.net", backends["blog"].address, "--wait")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: fleet.all_serve("blog.example.net", "blog"), CONVERGE, what="served on all nodes")
    status = json.loads(fleet.route("status", "--json").stdout)
    assert set(status["nodes"]) == set(IPS) and not any(n["behind"] for n in status["nodes"].values())
    r = fleet.route("rm", "blog.example.net")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: fleet.none_serve("blog.example.net"), CONVERGE, what="gone from all nodes")


def test_changes_arrive_without_the_hint(fleet, backends, redis_server):
    # The subscribers' connections killed: the next change still arrives (resync on resubscribe, poll).
    # Every node's subscriber is connected first (one may still be resubscribing after the last test).
    wait_until(lambda: len(redis_server.cli("CLIENT", "LIST", "TYPE", "pubsub").strip().splitlines()) >= 3,
               CONVERGE, what="three subscribers")
    assert int(redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")) == 3
    fleet.route("add", "blog.example.net", backends["blog"].address)
    wait_until(lambda: fleet.all_serve("blog.example.net", "blog"), CONVERGE + POLL, what="served after CLIENT KILL")
    # A change written with no hint at all (as a writer that forgot to publish): the poll finds it.
    store = fleet.store_client()
    table = routes.with_route(store.read(), routes.make_route("api.example.net", [backends["api"].address]))
    redis_server.cli("HSET", "frontgate:routes:table", "api.example.net",
                     json.dumps(routes.route_doc(table.routes["api.example.net"])))
    redis_server.cli("SET", "frontgate:routes:version", str(table.version))
    wait_until(lambda: fleet.all_serve("api.example.net", "api"), CONVERGE + POLL, what="found by the poll")


def test_with_redis_killed_nodes_keep_serving_and_a_restarted_router_serves_its_snapshot(fleet, backends,
                                                                                          redis_server):
    fleet.route("add", "blog.example.net", backends["blog"].address, "--wait")
    wait_until(lambda: fleet.all_serve("blog.example.net", "blog"), CONVERGE)
    redis_server.stop()
    node = fleet.nodes[2]
    wait_until(lambda: "redis unreachable" in daemon_output(fleet.syncers[node.ip]), CONVERGE + POLL)
    assert fleet.all_serve("blog.example.net", "blog")
    fleet.stop(node)
    fleet.start(node)                     # router and syncer restarted while Redis is down
    assert node.serves("blog.example.net", "/", "blog")
    redis_server.start()                  # empty now (no persistence): version 0 is older than the snapshot
    wait_until(lambda: "not applied" in daemon_output(fleet.syncers[node.ip]), CONVERGE + POLL)
    assert fleet.all_serve("blog.example.net", "blog")


def test_concurrent_adds_all_land_or_get_a_clean_conflict(fleet, backends):
    results = [None] * 8

    def add(i):
        results[i] = fleet.route("add", f"site{i}.example.net", backends["other"].address)
    threads = [threading.Thread(target=add, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    landed = [i for i, r in enumerate(results) if r.returncode == 0]
    for r in results:
        assert r.returncode == 0 or (r.returncode == 1 and "conflict" in r.stderr), r.stderr
    table = fleet.store_client().read()
    assert sorted(table.routes) == sorted(f"site{i}.example.net" for i in landed)
    assert table.version == len(landed)


def test_two_writers_in_threads_lose_no_update(fleet, backends):
    stores = [fleet.store_client(), fleet.store_client()]
    errors = []

    def writer(w):
        for i in range(15):
            route = routes.make_route(f"w{w}-{i}.example.net", [backends["other"].address])
            try:
                stores[w].change(lambda t: routes.with_route(t, route))
            except StoreError as e:
                errors.append(str(e))
    threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all("conflict" in e for e in errors), errors
    table = stores[0].read()
    assert len(table) == 30 - len(errors) and table.version == len(table)


def test_the_shrink_guard_holds_until_forced(fleet, backends, redis_server):
    for i in range(6):
        assert fleet.route("add", f"s{i}.example.net", backends["other"].address).returncode == 0
    wait_until(lambda: all(fleet.all_serve(f"s{i}.example.net", "other") for i in range(6)), CONVERGE)
    # Four of six gone at once, written behind the CLI's back: no node applies it.
    redis_server.cli("HDEL", "frontgate:routes:table", *(f"s{i}.example.net" for i in range(4)))
    redis_server.cli("INCR", "frontgate:routes:version")
    wait_until(lambda: all(n.get("refused") for n in
                           json.loads(fleet.route("status", "--json").stdout)["nodes"].values()), CONVERGE + POLL)
    assert fleet.all_serve("s0.example.net", "other")
    r = fleet.route("resync", "--force")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: fleet.none_serve("s0.example.net"), CONVERGE, what="forced table applied")
    assert fleet.all_serve("s5.example.net", "other")


def test_nodes_resync_after_a_sentinel_failover(tmp_path, backends):
    master = RedisServer(tmp_path / "m").start()
    replica = RedisServer(tmp_path / "r", replica_of=master).start()
    sentinel = Sentinel(tmp_path / "s", master).start()
    f = Fleet(tmp_path, f"sentinel://127.0.0.1:{sentinel.port}/routes", backends)
    try:
        for node in f.nodes:
            f.start(node)
        assert f.route("add", "blog.example.net", backends["blog"].address, "--wait").returncode == 0
        wait_until(lambda: f.all_serve("blog.example.net", "blog"), CONVERGE)
        wait_until(lambda: "master_link_status:up" in replica.cli("INFO", "replication"), 30, what="replica synced")
        wait_until(lambda: replica.cli("GET", "frontgate:routes:version") == "1", 30, what="replicated")
        master.stop()
        wait_until(lambda: sentinel.master_port() == replica.port, 60, interval=0.5, what="failover")
        r = f.route("add", "api.example.net", backends["api"].address)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: f.all_serve("api.example.net", "api"), CONVERGE + POLL, what="served after failover")
        assert f.all_serve("blog.example.net", "blog")
    finally:
        for node in list(f.nodes):
            if node.ip in f.syncers:
                f.stop(node)
        sentinel.stop()
        replica.stop()
        master.stop()


def test_a_table_written_before_format_2_keeps_tunnelling_websockets(redis_server, tmp_path):
    """Docs written when the websocket flag was only a note (no PREFIX:format) say false for every
    route added without --websocket: they read as true, and the first change rewrites them so."""
    store = RedisStore(RoutesConfig(file=tmp_path / "routes.json", store=redis_server.url, node="test"))
    old_doc = {"host": "old.example.net", "path": "/", "servers": ["127.0.0.1:9"], "websocket": False,
               "balance": "roundrobin", "owner": "root", "revision": 1}
    redis_server.cli("HSET", "frontgate:routes:table", "old.example.net", json.dumps(old_doc))
    redis_server.cli("SET", "frontgate:routes:version", "1")
    assert store.read().routes["old.example.net"].websocket is True
    off = routes.make_route("new.example.net", ["127.0.0.1:9"], websocket=False)
    store.change(lambda t: routes.with_route(t, off))
    assert redis_server.cli("GET", "frontgate:routes:format") == str(routes.FORMAT)
    assert json.loads(redis_server.cli("HGET", "frontgate:routes:table", "old.example.net"))["websocket"] is True
    table = store.read()
    assert (table.routes["old.example.net"].websocket, table.routes["new.example.net"].websocket) == (True, False)

"""The dynamic route table, pure: parsing, validation of a whole table, the guard, the merge."""
from __future__ import annotations

import dataclasses
import json

import pytest

from frontgate import routes
from frontgate.config import App, Address, Server
from frontgate.routes import RouteError
from mux_router.routing import select_app


@pytest.mark.parametrize("target, expected", [
    ("Blog.Example.NET", ("blog.example.net", "/")),
    ("blog.example.net.", ("blog.example.net", "/")),
    ("blog.example.net/api", ("blog.example.net", "/api")),
    ("blog.example.net/api/", ("blog.example.net", "/api/")),
    ("*.alice.apps.example.net", ("*.alice.apps.example.net", "/")),
])
def test_targets(target, expected):
    assert routes.parse_target(target) == expected


@pytest.mark.parametrize("target, problem", [
    ("bad_host", "bad host"), ("", "bad host"), ("a..b", "bad host"), ("**.example.net", "bad host"),
    ("x.*.example.net", "bad host"), ("é.example.net", "bad host"),
    ("a.example.net/../etc", "bad path"), ("a.example.net/a//b", "bad path"), ("a.example.net/a b", "bad path"),
    ("a.example.net/a?b", "bad path"), ("a.example.net/%2e", "bad path"),
])
def test_bad_targets(target, problem):
    with pytest.raises(RouteError, match=problem):
        routes.parse_target(target)


@pytest.mark.parametrize("servers, problem", [
    ([], "at least one server"), (["127.0.0.1"], "bad server"), (["127.0.0.1:0"], "bad server"),
    (["unix:"], "bad server"), (["unix:relative.sock"], "absolute"), (["::1:80"], "bad server"),
    (["127.0.0.1:80", "127.0.0.1:80"], "twice"),
])
def test_bad_servers(servers, problem):
    with pytest.raises(RouteError, match=problem):
        routes.make_route("a.example.net", servers)


def test_good_servers_and_balance():
    route = routes.make_route("a.example.net", ["127.0.0.1:80", "[::1]:81", "unix:/run/app.sock"], balance="uri")
    assert route.servers == ("127.0.0.1:80", "[::1]:81", "unix:/run/app.sock")
    with pytest.raises(RouteError, match="bad balance"):
        routes.make_route("a.example.net", ["127.0.0.1:80"], balance="random")


def table(*targets: str, version: int = 1) -> routes.RouteTable:
    return routes.table_of([routes.make_route(t, ["127.0.0.1:9000"]) for t in targets], version)


def test_a_table_round_trips_and_is_validated_whole():
    t = table("a.example.net", "a.example.net/x", "*.b.example.net", version=3)
    assert routes.loads(routes.dumps(t)) == t
    doc = json.loads(routes.dumps(t))
    doc["routes"][1]["servers"] = ["nope"]
    with pytest.raises(RouteError, match=r"routes\[1\]: bad server"):
        routes.loads(json.dumps(doc))
    doc = json.loads(routes.dumps(t))
    doc["routes"].append(doc["routes"][0])
    with pytest.raises(RouteError, match="listed twice"):
        routes.loads(json.dumps(doc))
    for bad in ('[]', '{"format": 2}', '{"format": 1, "version": -1, "routes": []}',
                '{"format": 1, "version": 1, "routes": [{"host": "a.example.net", "servers": ["127.0.0.1:1"], "x": 1}]}'):
        with pytest.raises(RouteError):
            routes.loads(bad)


def test_the_websocket_flag_round_trips_and_a_format_1_table_tunnels_upgrades():
    """Format 1 was written when the flag was a note and every route tunnelled upgrades: its
    `false` (the old default) must not start refusing them."""
    off = routes.make_route("a.example.net", ["127.0.0.1:9000"], websocket=False)
    assert routes.make_route("b.example.net", ["127.0.0.1:9000"]).websocket is True
    t = routes.table_of([off], 1)
    assert routes.loads(routes.dumps(t)).routes["a.example.net"].websocket is False
    assert routes.app_of(off).websocket is False
    legacy = json.loads(routes.dumps(t)) | {"format": 1}
    assert routes.loads(json.dumps(legacy)).routes["a.example.net"].websocket is True


@pytest.mark.parametrize("old, new, refused", [
    (6, 3, False),        # half: fine
    (6, 2, True),         # four of six at once
    (2, 0, True),         # both of two
    (1, 0, False),        # one route removed: a plain `route rm`
    (0, 5, False),
])
def test_the_shrink_guard(old, new, refused):
    before = table(*(f"s{i}.example.net" for i in range(old)), version=5)
    after = table(*(f"s{i}.example.net" for i in range(new)), version=6)
    assert (routes.transition_problem(before, after) is not None) == refused
    assert routes.transition_problem(before, dataclasses.replace(after, forced=6)) is None


def test_a_version_going_backwards_is_refused():
    assert "older" in routes.transition_problem(table("a.example.net", version=5), table("a.example.net", version=4))


def test_changes_bump_the_version_and_stamp_the_revision():
    t = routes.with_route(routes.EMPTY, routes.make_route("a.example.net", ["127.0.0.1:1"]))
    t = routes.with_route(t, routes.make_route("b.example.net", ["127.0.0.1:1"]))
    assert (t.version, t.routes["b.example.net"].revision, t.routes["a.example.net"].revision) == (2, 2, 1)
    t = routes.without_route(t, "a.example.net")
    assert (t.version, list(t.routes)) == (3, ["b.example.net"])
    with pytest.raises(RouteError, match="no route"):
        routes.without_route(t, "a.example.net")


def static(name, hosts, path="/", **kw) -> App:
    return App(name=name, hosts=hosts, path_prefix=path, servers=(Server(Address.parse("127.0.0.1:1")),), **kw)


@pytest.mark.parametrize("apps, target, conflict", [
    ([static("s", ("a.example.net",))], "a.example.net/x", "s"),
    ([static("s", ("a.example.net",), "/api")], "a.example.net", None),       # the route serves the rest
    ([static("s", ("*.example.net",))], "a.example.net", "s"),
    ([static("s", ("**.example.net",))], "x.a.example.net", "s"),
    ([static("s", ("*.example.net",))], "*.example.net", "s"),
    ([static("s", ("b.example.net",))], "a.example.net", None),
    ([static("d", (), default=True)], "a.example.net", None),                 # only the fallback
])
def test_static_conflicts(apps, target, conflict):
    found = routes.static_conflict(apps, routes.make_route(target, ["127.0.0.1:2"]))
    assert (found.name if found else None) == conflict


def test_merged_apps_route_after_the_static_ones_longest_prefix_first():
    apps = (static("s", ("a.example.net",), "/static"),)
    t = table("a.example.net", "a.example.net/static/more", "a.example.net/api", "*.example.net")
    merged = apps + routes.apps_of(t)
    assert select_app(merged, "a.example.net", "/static/more/x").name == "s"
    assert select_app(merged, "a.example.net", "/api/v1").name == "route:a.example.net/api"
    assert select_app(merged, "a.example.net", "/").name == "route:a.example.net"
    assert select_app(merged, "b.example.net", "/").name == "route:*.example.net"
    assert select_app(merged, "c.other.net", "/") is None

"""Dynamic routes: the route table beside the static apps of mux-router.toml, pure.

A route sends `host[/path-prefix]` to one or more servers (`host:port` or `unix:/path`), with a
balance algorithm, a websocket flag, the owner who added it and a revision (the table version
that last changed it). The table is one JSON document, always validated whole and applied whole:

    {"format": 1, "version": 7, "forced": 0,
     "routes": [{"host": "blog.alice.apps.example.net", "path": "/", "servers": ["127.0.0.1:8001"],
                 "websocket": false, "balance": "roundrobin", "owner": "alice", "revision": 7}]}

The router turns each route into a frontgate.config.App (named `route:HOST/PATH`), placed after
the static apps: a static app always wins for a host and path it serves, and balancing, health
keys, metrics and the stats page treat routes as apps.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from frontgate import names
from frontgate.config import Address, App, RouterConfig, Server

FORMAT = 1
BALANCES = ("roundrobin", "leastconn", "source", "uri")
APP_PREFIX = "route:"           # dynamic apps' names; static app names have no ':'... nor '/'
MAX_SERVERS = 64
MAX_ROUTES = 100_000
MAX_PATH = 1024


class RouteError(ValueError):
    """A route or table that is not valid (the text says which field and why)."""


@dataclass(frozen=True)
class Route:
    host: str                        # normalised exact name, or `*.suffix`
    path: str = "/"                  # prefix; starts with '/'
    servers: tuple[str, ...] = ()    # "host:port" | "unix:/path", as Address.parse takes them
    websocket: bool = False          # informational: the backend speaks WebSocket (tunnelled either way)
    balance: str = "roundrobin"
    owner: str = ""
    revision: int = 0

    @property
    def key(self) -> str:
        """`host` for the whole host, `host/path` for a prefix: what the CLI names a route by."""
        return self.host if self.path == "/" else self.host + self.path


@dataclass(frozen=True)
class RouteTable:
    version: int = 0
    routes: Mapping[str, Route] = dataclasses.field(default_factory=dict)   # by key
    forced: int = 0        # the version written with --force: nodes apply it past the shrink guard

    def __len__(self) -> int:
        return len(self.routes)


EMPTY = RouteTable()


# --------------------------------------------------------------------------- one route

def parse_target(text: str) -> tuple[str, str]:
    """`HOST[/PATH]` -> (normalised host pattern, path prefix); RouteError naming the problem."""
    host, slash, rest = text.partition("/")
    try:
        host = names.pattern(host)
    except names.BadName as e:
        raise RouteError(f"bad host: {e}") from None
    return host, check_path("/" + rest if slash else "/")


def check_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise RouteError(f"bad path: {path!r} must start with '/'")
    if len(path) > MAX_PATH or not path.isascii() or any(c <= " " or c in "?#%\\\x7f" for c in path):
        raise RouteError(f"bad path: {path!r}: printable ASCII without spaces, '?', '#', '%' or '\\\\'")
    if "/../" in path + "/" or "/./" in path + "/" or "//" in path:
        raise RouteError(f"bad path: {path!r} is not normalised ('//', '.' or '..' segments)")
    return path


def check_server(text: str) -> str:
    """A server as `host:port` or `unix:/absolute/path`; RouteError otherwise."""
    try:
        address = Address.parse(text)
    except ValueError as e:
        raise RouteError(f"bad server: {e}") from None
    if address.is_unix and not address.path.startswith("/"):
        raise RouteError(f"bad server: {text!r}: a unix socket path must be absolute")
    return text


def make_route(target: str, servers: Iterable[str], *, websocket: bool = False, balance: str = "roundrobin",
               owner: str = "", revision: int = 0) -> Route:
    host, path = parse_target(target)
    return check_route(Route(host=host, path=path, servers=tuple(servers), websocket=websocket,
                             balance=balance, owner=owner, revision=revision))


def check_route(route: Route) -> Route:
    """The route with every field checked; RouteError naming the first bad one."""
    try:
        host = names.pattern(route.host)
    except (names.BadName, AttributeError) as e:
        raise RouteError(f"bad host: {e}") from None
    if not route.servers:
        raise RouteError(f"{route.key}: at least one server is needed")
    if len(route.servers) > MAX_SERVERS:
        raise RouteError(f"{route.key}: more than {MAX_SERVERS} servers")
    servers = tuple(check_server(s) for s in route.servers)
    if len(set(servers)) != len(servers):
        raise RouteError(f"{route.key}: a server is listed twice")
    if route.balance not in BALANCES:
        raise RouteError(f"bad balance {route.balance!r}: one of {', '.join(BALANCES)}")
    if not isinstance(route.owner, str) or len(route.owner) > 64:
        raise RouteError("bad owner: a string of at most 64 characters")
    if not isinstance(route.websocket, bool):
        raise RouteError("bad websocket: true or false")
    if isinstance(route.revision, bool) or not isinstance(route.revision, int) or route.revision < 0:
        raise RouteError("bad revision: a non-negative integer")
    return dataclasses.replace(route, host=host, path=check_path(route.path), servers=servers)


# --------------------------------------------------------------------------- the table, encoded

def route_doc(route: Route) -> dict[str, Any]:
    return dataclasses.asdict(route) | {"servers": list(route.servers)}


def route_from_doc(doc: Any, where: str) -> Route:
    if not isinstance(doc, dict):
        raise RouteError(f"{where}: expected an object")
    unknown = set(doc) - {f.name for f in dataclasses.fields(Route)}
    if unknown:
        raise RouteError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    servers = doc.get("servers")
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise RouteError(f"{where}.servers: expected a list of strings")
    try:
        return check_route(Route(**(doc | {"servers": tuple(servers)})))
    except (RouteError, TypeError) as e:
        raise RouteError(f"{where}: {e}") from None


def dumps(table: RouteTable) -> bytes:
    doc = {"format": FORMAT, "version": table.version, "forced": table.forced,
           "routes": [route_doc(r) for _, r in sorted(table.routes.items())]}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def loads(data: bytes | str) -> RouteTable:
    """Parse and validate a whole table; RouteError naming the first problem."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RouteError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RouteError(f"not a format-{FORMAT} route table")
    version, forced = doc.get("version"), doc.get("forced", 0)
    for name, value in (("version", version), ("forced", forced)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RouteError(f"{name}: expected a non-negative integer, got {value!r}")
    docs = doc.get("routes")
    if not isinstance(docs, list) or len(docs) > MAX_ROUTES:
        raise RouteError(f"routes: expected a list of at most {MAX_ROUTES} routes")
    return table_of((route_from_doc(d, f"routes[{i}]") for i, d in enumerate(docs)), version, forced)


def table_of(routes: Iterable[Route], version: int, forced: int = 0) -> RouteTable:
    by_key: dict[str, Route] = {}
    for route in routes:
        if route.key in by_key:
            raise RouteError(f"{route.key}: listed twice")
        by_key[route.key] = route
    return RouteTable(version=version, routes=by_key, forced=forced)


# --------------------------------------------------------------------------- changes

def with_route(table: RouteTable, route: Route) -> RouteTable:
    """The next version of the table with `route` added or replaced (its revision: that version)."""
    version = table.version + 1
    return RouteTable(version=version, routes={**table.routes, route.key: dataclasses.replace(route, revision=version)})


def without_route(table: RouteTable, key: str) -> RouteTable:
    if key not in table.routes:
        raise RouteError(f"no route {key}")
    return RouteTable(version=table.version + 1, routes={k: r for k, r in table.routes.items() if k != key})


def route_key(target: str) -> str:
    host, path = parse_target(target)
    return host if path == "/" else host + path


def transition_problem(old: RouteTable, new: RouteTable) -> str | None:
    """Why `new` must not replace `old` without --force: the version goes backwards, or more than
    half of the routes (and more than one) would go at once. None: fine. A table written with
    --force (forced == version) passes the shrink guard on every node."""
    if new.version < old.version:
        return f"version {new.version} is older than the applied {old.version}"
    removed = sum(1 for key in old.routes if key not in new.routes)
    if removed > 1 and removed * 2 > len(old) and new.forced != new.version:
        return (f"version {new.version} removes {removed} of {len(old)} routes at once "
                "(more than half): not applied without --force")
    return None


def static_conflict(static_apps: Sequence[App], route: Route) -> App | None:
    """The static app that would serve every request of `route` (its hosts cover the route's host
    and its path prefix starts the route's path): adding it would be pointless, so it is refused."""
    for app in static_apps:
        if app.default and not app.hosts and app.host_regex is None:
            continue               # only the fallback: a route wins over it
        if app.path_regex is not None or app.header is not None:
            continue               # serves only some requests
        if not route.path.startswith(app.path_prefix):
            continue
        if not app.hosts and app.host_regex is None:
            return app
        if any(names.matches(p, route.host) or p == route.host for p in app.hosts):
            return app
        if app.host_regex is not None and not route.host.startswith("*") and app.host_regex.fullmatch(route.host):
            return app
    return None


# --------------------------------------------------------------------------- the router's view

def app_of(route: Route) -> App:
    return App(name=APP_PREFIX + route.key, hosts=(route.host,), path_prefix=route.path, balance=route.balance,
               servers=tuple(Server(address=Address.parse(s)) for s in route.servers))


_APPS: dict[int, tuple[RouteTable, tuple[App, ...]]] = {}     # by id(table): a reload re-merges the same one


def apps_of(table: RouteTable) -> tuple[App, ...]:
    """The table's routes as apps, in the order select_app must try them: exact hosts before
    wildcards, longer path prefixes first."""
    cached = _APPS.get(id(table))
    if cached is not None and cached[0] is table:
        return cached[1]
    ordered = sorted(table.routes.values(), key=lambda r: (r.host.startswith("*"), -len(r.path), r.key))
    apps = tuple(app_of(r) for r in ordered)
    if len(_APPS) >= 4:
        _APPS.clear()
    _APPS[id(table)] = (table, apps)
    return apps


def merged(static: RouterConfig, table: RouteTable) -> RouterConfig:
    """The config the router serves: the static apps first (they win), then the routes."""
    if not table.routes:
        return static
    return dataclasses.replace(static, apps=static.apps + apps_of(table))

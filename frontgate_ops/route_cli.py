"""`frontgate route ...`: the dynamic route table from the command line.

    frontgate route add HOST[/PATH] SERVER... [--websocket] [--balance B] [--wait] [--force]
    frontgate route rm HOST[/PATH] [--wait] [--force]
    frontgate route ls [--json]
    frontgate route show HOST [--json]
    frontgate route status [--json]          the table's version, and each node's (Redis)
    frontgate route resync --force           rewrite the table as a new forced version
    frontgate route sync                     the per-node Redis follower (a supervisord program)
    frontgate route broker                   the self-service broker (a supervisord program)

Bad input (host, path, server, balance, a static app that already serves the name) is one line on
stderr and exit 2; an unreachable store or a refused change exit 1. A user who is not root, where
[routes.self_service] is set, goes through the broker (frontgate/route_broker.py).
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time

from frontgate import routes
from frontgate.config import ConfigError, RouterConfig, load_router_config
from frontgate.daemon import EXIT_CONFIG_ERROR
from frontgate.route_store import StoreError, open_store
from frontgate.route_store_file import read_table

EXIT_FAILED = 1
WAIT_TIMEOUT = 10.0        # --wait gives up (exit 1) after this many seconds


class Refused(Exception):
    """Bad input: one line, exit 2."""


def add_parsers(route: argparse.ArgumentParser) -> None:
    sub = route.add_subparsers(dest="route_command", required=True)

    def waits(c: argparse.ArgumentParser) -> None:
        c.add_argument("--wait", action="store_true", help="return when every live node applied the change")
        c.add_argument("--force", action="store_true", help="pass the shrink and version guard")

    c = sub.add_parser("add", help="add or replace the route for HOST[/PATH]")
    c.add_argument("target", metavar="HOST[/PATH]")
    c.add_argument("servers", nargs="+", metavar="SERVER", help="host:port or unix:/path")
    c.add_argument("--websocket", action="store_true", help="the backend speaks WebSocket")
    c.add_argument("--balance", default="roundrobin", choices=routes.BALANCES)
    waits(c)
    c = sub.add_parser("rm", help="remove the route for HOST[/PATH]")
    c.add_argument("target", metavar="HOST[/PATH]")
    waits(c)
    c = sub.add_parser("ls", help="every route")
    c.add_argument("--json", action="store_true")
    c = sub.add_parser("show", help="the routes of one host")
    c.add_argument("host")
    c.add_argument("--json", action="store_true")
    c = sub.add_parser("status", help="the table's version and each node's")
    c.add_argument("--json", action="store_true")
    c = sub.add_parser("resync", help="write the current table again as a new forced version")
    c.add_argument("--force", action="store_true", required=True)
    sub.add_parser("sync", help="follow the Redis store into this node's table file (runs until stopped)")
    sub.add_parser("broker", help="the self-service broker on [routes.self_service] socket (runs until stopped)")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_router_config(args.configs / "mux-router.toml")
    except ConfigError as e:
        print(f"frontgate route: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        return COMMANDS[args.route_command](cfg, args)
    except Refused as e:
        print(f"frontgate route: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except routes.RouteError as e:
        print(f"frontgate route: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except StoreError as e:
        print(f"frontgate route: {e}", file=sys.stderr)
        return EXIT_FAILED


def caller_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def through_broker(cfg: RouterConfig) -> bool:
    return cfg.routes.self_service is not None and os.geteuid() != 0


def new_route(cfg: RouterConfig, target: str, servers: list[str], websocket: bool, balance: str,
              owner: str) -> routes.Route:
    """The route, checked: RouteError for bad input, Refused when a static app serves it."""
    route = routes.make_route(target, servers, websocket=websocket, balance=balance, owner=owner)
    app = routes.static_conflict(cfg.apps, route)
    if app is not None:
        raise Refused(f"{route.key}: the static app {app.name!r} in {cfg.path.name} serves it (static apps win)")
    return route


def cmd_add(cfg: RouterConfig, args: argparse.Namespace) -> int:
    if through_broker(cfg):
        return broker_request(cfg, args, {"op": "add", "target": args.target, "servers": args.servers,
                                          "websocket": args.websocket, "balance": args.balance})
    route = new_route(cfg, args.target, args.servers, args.websocket, args.balance, caller_name())
    table = open_store(cfg.routes).change(lambda t: routes.with_route(t, route), args.force)
    print(f"{route.key} -> {' '.join(route.servers)} (version {table.version})")
    return wait_for(cfg, table.version) if args.wait else 0


def cmd_rm(cfg: RouterConfig, args: argparse.Namespace) -> int:
    if through_broker(cfg):
        return broker_request(cfg, args, {"op": "rm", "target": args.target})
    key = routes.route_key(args.target)
    table = open_store(cfg.routes).change(lambda t: routes.without_route(t, key), args.force)
    print(f"{key} removed (version {table.version})")
    return wait_for(cfg, table.version) if args.wait else 0


def broker_request(cfg: RouterConfig, args: argparse.Namespace, request: dict) -> int:
    """The broker does the change (and the --wait: it holds the store's credentials, we do not)."""
    from frontgate_ops.route_broker import ask
    answer = ask(cfg.routes.self_service.socket, request | {"wait": args.wait})
    if not answer.get("ok"):
        raise Refused(answer.get("error", "refused"))
    print(answer["message"])
    return 0


def current_table(cfg: RouterConfig) -> routes.RouteTable:
    """The store's table; a user without its credentials reads this node's file."""
    if cfg.routes.shared and through_broker(cfg):
        return read_table(cfg.routes.file)
    return open_store(cfg.routes).read()


def route_line(route: routes.Route) -> str:
    flags = " websocket" if route.websocket else ""
    return (f"{route.key:40} {' '.join(route.servers):30} {route.balance}{flags} "
            f"owner={route.owner or '-'} revision={route.revision}")


def cmd_ls(cfg: RouterConfig, args: argparse.Namespace) -> int:
    table = current_table(cfg)
    if args.json:
        print(json.dumps({"version": table.version, "routes": [routes.route_doc(r) for _, r in sorted(table.routes.items())]},
                         indent=2))
    else:
        for _, route in sorted(table.routes.items()):
            print(route_line(route))
    return 0


def cmd_show(cfg: RouterConfig, args: argparse.Namespace) -> int:
    host, _ = routes.parse_target(args.host)
    found = [r for _, r in sorted(current_table(cfg).routes.items()) if r.host == host]
    if not found:
        print(f"frontgate route: no route for {host}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([routes.route_doc(r) for r in found], indent=2))
    else:
        for route in found:
            print(route_line(route))
    return 0


def status_facts(cfg: RouterConfig) -> dict:
    store = open_store(cfg.routes)
    table = store.read()
    facts: dict = {"store": store.describe(), "version": table.version, "routes": len(table),
                   "file": str(cfg.routes.file)}
    if cfg.routes.shared:
        nodes = store.node_records()
        facts["nodes"] = {name: dict(doc, behind=int(doc.get("version", 0)) < table.version)
                          for name, doc in nodes.items()}
    return facts


def cmd_status(cfg: RouterConfig, args: argparse.Namespace) -> int:
    facts = status_facts(cfg)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"store {facts['store']}: version {facts['version']}, {facts['routes']} routes")
    for name, doc in sorted(facts.get("nodes", {}).items()):
        state = "behind" if doc["behind"] else "up to date"
        refused = f" (refused: {doc['refused']})" if doc.get("refused") else ""
        print(f"  node {name}: version {doc['version']} {state}{refused}")
    return 0


def cmd_resync(cfg: RouterConfig, args: argparse.Namespace) -> int:
    store = open_store(cfg.routes)
    floor = max(store.node_versions().values(), default=0)
    table = store.change(lambda t: routes.RouteTable(version=max(t.version, floor) + 1, routes=t.routes), force=True)
    print(f"version {table.version} written with --force: every node applies it")
    return 0


def cmd_sync(cfg: RouterConfig, args: argparse.Namespace) -> int:
    if not cfg.routes.shared:
        raise Refused("[routes] store is \"file\": there is nothing to sync (the router follows the file)")
    from frontgate.daemon import setup_logging
    from frontgate_ops.route_sync import Syncer
    setup_logging("route-sync")
    Syncer(cfg.routes).run()
    return 0


def wait_for(cfg: RouterConfig, version: int) -> int:
    behind = wait_for_nodes(cfg, version)
    if behind:
        print(f"frontgate route: after {WAIT_TIMEOUT:g}s still behind version {version}: {', '.join(behind)}",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def wait_for_nodes(cfg: RouterConfig, version: int) -> list[str]:
    """--wait: until every live node applied `version`; the nodes still behind after WAIT_TIMEOUT.
    One host with the file store: the write is the table (the router stats it every 0.25 s)."""
    if not cfg.routes.shared:
        return []
    store = open_store(cfg.routes)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        behind = sorted(n for n, v in store.node_versions().items() if v < version)
        if not behind or time.monotonic() > deadline:
            return behind
        time.sleep(0.1)


def cmd_broker(cfg: RouterConfig, args: argparse.Namespace) -> int:
    if cfg.routes.self_service is None:
        raise Refused("[routes.self_service] is not set in mux-router.toml: no broker to run")
    from frontgate.daemon import setup_logging
    from frontgate_ops.route_broker import serve
    setup_logging("route-broker")
    serve(cfg)
    return 0


COMMANDS = {"add": cmd_add, "rm": cmd_rm, "ls": cmd_ls, "show": cmd_show, "status": cmd_status,
            "resync": cmd_resync, "sync": cmd_sync, "broker": cmd_broker}

"""The self-service broker: users who are not root add and remove routes for their own names, to
their own ports, without the store's credentials (`frontgate route broker`, a supervisord program
running as root or as the user that holds the credentials).

It listens on a unix socket anyone may connect to, and learns who connected from the kernel
(SO_PEERCRED), never from the request. Two rules, each named in its refusal:
- `user_domains`: the route's host is one of the names [routes.self_service] user_domains gives
  the user (`{user}` replaced by the caller's login name);
- `own_ports`: every server is host:port on loopback, and the caller's uid listens on that port
  (/proc/net/tcp and tcp6: the kernel's word). unix: servers are for the operator.
Plus what every route must pass: valid fields, no static app serving the name (route_cli.new_route).

Protocol: one JSON object per connection each way, a line each.
    {"op": "add", "target": "blog.alice.apps.example.net", "servers": ["127.0.0.1:8001"],
     "websocket": false, "balance": "roundrobin", "wait": false}
    {"op": "rm", "target": "blog.alice.apps.example.net"}
    -> {"ok": true, "version": 12, "message": "..."} | {"ok": false, "error": "refused by rule own_ports: ..."}
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import pwd
import socket
import socketserver
import struct
from pathlib import Path

from frontgate import names, routes
from frontgate.config import Address, RouterConfig
from frontgate.route_store import StoreError, open_store

log = logging.getLogger("route-broker")

MAX_REQUEST = 64 * 1024
LISTEN_STATE = "0A"          # TCP_LISTEN in /proc/net/tcp


class RuleRefusal(Exception):
    """A self-service rule refused the request (the text names it)."""


# --------------------------------------------------------------------------- the rules (pure)

def user_patterns(user_domains: tuple[str, ...], user: str) -> list[str]:
    out = []
    for template in user_domains:
        try:
            out.append(names.pattern(template.replace("{user}", user)))
        except names.BadName:
            continue            # a login name that makes no host name gets no names from this template
    return out


def check_host(user_domains: tuple[str, ...], user: str, host: str) -> None:
    patterns = user_patterns(user_domains, user)
    if not any(p == host or names.matches(p, host) for p in patterns):
        raise RuleRefusal(f"refused by rule user_domains: {host} is not one of your names "
                          f"({', '.join(patterns) or 'none'})")


def parse_listening(text: str, uid: int) -> set[int]:
    """Ports `uid` listens on, from /proc/net/tcp or tcp6 text, on loopback or any address."""
    ports = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != LISTEN_STATE or fields[7] != str(uid):
            continue
        address, _, port = fields[1].partition(":")
        if _loopback_or_any(address):
            ports.add(int(port, 16))
    return ports


def _loopback_or_any(hex_address: str) -> bool:
    raw = bytes.fromhex(hex_address)
    # /proc prints each 32-bit word in host byte order.
    words = [raw[i:i + 4][::-1] if struct.pack("=I", 1) == b"\x01\x00\x00\x00" else raw[i:i + 4]
             for i in range(0, len(raw), 4)]
    ip = ipaddress.ip_address(b"".join(words))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def check_servers(servers: tuple[str, ...], own_ports: set[int]) -> None:
    for text in servers:
        address = Address.parse(text)
        if address.is_unix:
            raise RuleRefusal(f"refused by rule own_ports: {text}: unix sockets are for the operator")
        try:
            loopback = ipaddress.ip_address(address.host).is_loopback
        except ValueError:
            loopback = address.host == "localhost"
        if not loopback:
            raise RuleRefusal(f"refused by rule own_ports: {text} is not on loopback")
        if address.port not in own_ports:
            raise RuleRefusal(f"refused by rule own_ports: nothing of yours listens on port {address.port}")


def listening_ports(uid: int) -> set[int]:
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            ports |= parse_listening(Path(name).read_text(), uid)
        except OSError:
            continue
    return ports


# --------------------------------------------------------------------------- the service

def decide(cfg: RouterConfig, uid: int, request: dict) -> dict:
    """Carry out one request for `uid`, or say which rule refused it."""
    from frontgate_ops.route_cli import Refused, new_route, wait_for_nodes
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {"ok": False, "error": f"uid {uid} has no login name"}
    service = cfg.routes.self_service
    store = open_store(cfg.routes)
    try:
        if request.get("op") == "add":
            servers = request.get("servers")
            if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
                raise RuleRefusal("servers: a list of host:port")
            route = new_route(cfg, str(request.get("target", "")), servers, bool(request.get("websocket")),
                              str(request.get("balance", "roundrobin")), user)
            check_host(service.user_domains, user, route.host)
            if uid != 0:
                check_servers(route.servers, listening_ports(uid))
            table = store.change(lambda t: routes.with_route(t, route))
            message = f"{route.key} -> {' '.join(route.servers)} (version {table.version})"
        elif request.get("op") == "rm":
            host, _ = routes.parse_target(str(request.get("target", "")))
            check_host(service.user_domains, user, host)
            key = routes.route_key(str(request["target"]))
            table = store.change(lambda t: routes.without_route(t, key))
            message = f"{key} removed (version {table.version})"
        else:
            return {"ok": False, "error": "op: add or rm"}
    except (RuleRefusal, Refused, routes.RouteError) as e:
        log.info("uid %d (%s): %s", uid, user, e)
        return {"ok": False, "error": str(e)}
    except StoreError as e:
        return {"ok": False, "error": str(e)}
    log.info("uid %d (%s): %s", uid, user, message)
    if request.get("wait"):
        behind = wait_for_nodes(cfg, table.version)
        if behind:
            return {"ok": False, "error": f"{message}, but still behind: {', '.join(behind)}"}
    return {"ok": True, "version": table.version, "message": message}


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return uid


def serve(cfg: RouterConfig) -> None:
    path = cfg.routes.self_service.socket

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            uid = peer_uid(self.connection)
            line = self.rfile.readline(MAX_REQUEST)
            try:
                request = json.loads(line)
                answer = decide(cfg, uid, request) if isinstance(request, dict) else {"ok": False, "error": "not JSON"}
            except ValueError:
                answer = {"ok": False, "error": "not JSON"}
            self.wfile.write((json.dumps(answer) + "\n").encode())

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with socketserver.ThreadingUnixStreamServer(str(path), Handler) as server:
        os.chmod(path, 0o666)      # anyone may ask; SO_PEERCRED says who asked
        log.info("listening on %s for %s", path, ", ".join(cfg.routes.self_service.user_domains))
        server.serve_forever()


def ask(path: Path, request: dict, timeout: float = 30.0) -> dict:
    """The CLI's side: one request, one answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as e:
            raise StoreError(f"the route broker at {path} is not answering: {e.strerror}") from None
        sock.sendall((json.dumps(request) + "\n").encode())
        data = sock.makefile("rb").readline(MAX_REQUEST)
    try:
        return json.loads(data)
    except ValueError:
        raise StoreError("the route broker sent no answer") from None

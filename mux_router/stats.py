"""The router's counters and its admin listener (/metrics, /stats, /stats.json).

RouterStats is called on the hot path: each method is a dict update on plain ints, nothing else.
Everything derived (gauges read off the Router, the merge over workers, Prometheus text, the page)
happens when the admin listener is asked (frontgate.metrics).
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from frontgate import package_version
from frontgate.admin_http import AdminEndpoint
from frontgate.metrics import Family, Values

if TYPE_CHECKING:
    from mux_router.router import Router

STAGE = "mux-router"
PREFIX = "frontgate_router_"
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_CLASS_OF = {i: c for i, c in enumerate(CODE_CLASSES, start=1)}

FAMILIES = (
    Family("requests_total", "counter",
           "requests by app, server and status class (the router's own answers: server \"-\"; "
           "before an app is chosen: app \"-\"; \"other\": no status was sent)", ("app", "server", "code")),
    Family("bytes_in_total", "counter", "bytes read from clients (request heads, bodies, tunnel data), by app",
           ("app",)),
    Family("bytes_out_total", "counter", "bytes sent to clients, by app", ("app",)),
    Family("backend_connect_errors_total", "counter", "failed connects to backend servers",
           ("app", "server", "reason")),
    Family("retries_total", "counter", "connect retries (each further attempt after a failed connect)", ("app",)),
    Family("fast_path_requests_total", "counter",
           "requests sent at once on a pooled backend connection (no connect, no queue wait); "
           "the others waited for a connect or a server slot"),
    Family("active_tunnels", "gauge", "open WebSocket tunnels"),
    Family("active_connections", "gauge", "open client connections"),
    Family("queue_length", "gauge", "requests waiting for a server slot (maxconn), by app", ("app",)),
    Family("server_active_requests", "gauge", "requests in flight per server", ("app", "server")),
    Family("server_up", "gauge", "1 when the server takes traffic, 0 when the health state or passive "
           "checks mark it down (as seen by the answering process)", ("app", "server"), merge="own"),
    Family("server_flapping", "gauge", "1 while the health checker holds the server down for flapping (flap "
           "damping), else 0", ("app", "server"), merge="own"),
    Family("state_file_age_seconds", "gauge", "age of the health state file's last write; -1 when there is none",
           merge="own"),
    Family("routes_version", "gauge", "version of the dynamic route table this process serves", merge="own"),
    Family("routes", "gauge", "dynamic routes this process serves (apps named route:HOST/PATH)", merge="own"),
)


def code_class(status: int) -> str:
    return _CLASS_OF.get(status // 100, "other")


class RouterStats:
    """Counters of one router process. Label values are app names, server addresses (host:port as
    in the config) and status classes."""

    __slots__ = ("requests", "bytes_in", "bytes_out", "connect_errors", "retries", "tunnels", "fast_path")

    def __init__(self):
        self.requests: dict[tuple[str, str, str], int] = {}
        self.bytes_in: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}
        self.connect_errors: dict[tuple[str, str, str], int] = {}
        self.retries: dict[str, int] = {}
        self.tunnels = 0
        self.fast_path = 0              # requests sent on a pooled backend connection at once (backends.dispatch)

    def request_done(self, app: str, server: str, status: int, bytes_in: int, bytes_out: int) -> None:
        """One request, answered by a backend or by the router. `app` "-" (or a route such as
        "<redirect>") when no app was chosen; `server` "-" when no server answered."""
        if not app or app[0] == "<":
            app = "-"
        key = (app, server or "-", _CLASS_OF.get(status // 100, "other"))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if bytes_in:
            self.bytes_in[app] = self.bytes_in.get(app, 0) + bytes_in
        if bytes_out:
            self.bytes_out[app] = self.bytes_out.get(app, 0) + bytes_out

    def connect_error(self, app: str, server: str, error: BaseException) -> None:
        reason = ("timeout" if isinstance(error, TimeoutError)
                  else "refused" if isinstance(error, ConnectionRefusedError) else "other")
        key = (app, server, reason)
        self.connect_errors[key] = self.connect_errors.get(key, 0) + 1

    def retry(self, app: str) -> None:
        self.retries[app] = self.retries.get(app, 0) + 1

    def values(self) -> Values:
        return {
            "requests_total": dict(self.requests),
            "bytes_in_total": {(a,): n for a, n in self.bytes_in.items()},
            "bytes_out_total": {(a,): n for a, n in self.bytes_out.items()},
            "backend_connect_errors_total": dict(self.connect_errors),
            "retries_total": {(a,): n for a, n in self.retries.items()},
            "active_tunnels": {(): self.tunnels},
            "fast_path_requests_total": {(): self.fast_path},
        }


# --------------------------------------------------------------------------- the admin side

class RouterAdmin(AdminEndpoint):
    """The Router's admin listener; does nothing when the config has no [admin]."""

    def __init__(self, router: "Router"):
        self.router = router
        super().__init__(STAGE, PREFIX, FAMILIES, router.config.admin, self._live, self._page_data,
                         "active_connections", "requests_total")

    def _live(self) -> Values:
        """This process's values now: the counters, and the gauges read off the Router."""
        router = self.router
        values = router.stats.values()
        values["active_connections"] = {(): len(router.connections)}
        values["queue_length"] = {(name,): len(q) for name, q in router.queues.items()}
        active, up, flapping = {}, {}, {}
        state = router.health.state
        for app in router.config.apps:
            for server in app.servers:
                label = (app.name, str(server.address))
                slot = router.slots.get(app.server_key(server))
                active[label] = slot.active if slot is not None else 0
                up[label] = 0 if router.is_down(app, server) else 1
                entry = router.health.entry(app.server_key(server))
                flapping[label] = 1 if entry is not None and entry.flapping else 0
        values["server_active_requests"] = active
        values["server_up"] = up
        values["routes_version"] = {(): router.routes.table.version}
        values["routes"] = {(): len(router.routes.table)}
        values["server_flapping"] = flapping
        values["state_file_age_seconds"] = {(): round(time.time() - state.written_at, 3) if state else -1}
        return values

    def _page_data(self, merged: Values, rates: Values, processes: list[dict]) -> dict:
        return router_page_data(self.router, merged, rates, processes, self.started)


def _sum(rows: dict[tuple, float], **match) -> float:
    """Sum of the rows whose labels match; `match` by label position name: app=0, server=1, code=2."""
    positions = {"app": 0, "server": 1, "code": 2, "reason": 2}
    return sum(v for labels, v in rows.items()
               if all(labels[positions[k]] == want for k, want in match.items()))


def router_page_data(router: "Router", merged: Values, rates: Values, processes: list[dict],
                     started: float) -> dict:
    """What /stats.json shows and /stats renders: per app its servers (state, sessions, counts by
    status class, errors, rate), the app's totals, and the router's own answers."""
    ver = package_version()
    now = time.time()
    requests = merged.get("requests_total", {})
    errors = merged.get("backend_connect_errors_total", {})
    rate_rows = rates.get("requests_total", {})
    state = router.health.state
    fresh = state is not None and not router.health.is_stale()
    apps = []
    for app in router.config.apps:
        servers = []
        for server in app.servers:
            name = str(server.address)
            key = app.server_key(server)
            slot = router.slots.get(key)
            entry = state.servers.get(key) if fresh else None
            if router.health.is_down(key):
                status = "FLAPPING" if entry.flapping else "DOWN"
                since, why = entry.since, entry.last_check.get("detail")
                if entry.flapping:
                    why = f"held down for changing state too often (last check: {why})"
            elif slot is not None and slot.down_since is not None and router.is_down(app, server):
                status, since, why = "DOWN", slot.down_since, "passively down: refused connects"
            else:
                status = "UP"
                since = entry.since if entry is not None else None
                why = entry.last_check.get("detail") if entry is not None else "no fresh health state"
            servers.append({
                "name": name, "status": status, "since": since, "why": why, "weight": server.weight,
                "active": merged.get("server_active_requests", {}).get((app.name, name), 0),
                "maxconn": server.maxconn,
                "requests": _sum(requests, app=app.name, server=name),
                "codes": {c: _sum(requests, app=app.name, server=name, code=c) for c in CODE_CLASSES},
                "connect_errors": _sum(errors, app=app.name, server=name),
                "rate": round(_sum(rate_rows, app=app.name, server=name), 2),
            })
        own = {"requests": _sum(requests, app=app.name, server="-"),
               "codes": {c: _sum(requests, app=app.name, server="-", code=c) for c in CODE_CLASSES},
               "rate": round(_sum(rate_rows, app=app.name, server="-"), 2)}
        apps.append({
            "name": app.name, "servers": servers, "router_answers": own,
            "queue": merged.get("queue_length", {}).get((app.name,), 0),
            "retries": merged.get("retries_total", {}).get((app.name,), 0),
            "bytes_in": merged.get("bytes_in_total", {}).get((app.name,), 0),
            "bytes_out": merged.get("bytes_out_total", {}).get((app.name,), 0),
            "totals": {
                "active": sum(s["active"] for s in servers),
                "requests": _sum(requests, app=app.name),
                "codes": {c: _sum(requests, app=app.name, code=c) for c in CODE_CLASSES},
                "connect_errors": _sum(errors, app=app.name),
                "rate": round(_sum(rate_rows, app=app.name), 2),
                "up": sum(s["status"] == "UP" for s in servers), "servers": len(servers),
            },
        })
    return {
        "stage": STAGE, "version": ver, "now": now, "pid": os.getpid(), "started": started,
        "processes": [dict(p, uptime=round(now - p["started"], 1)) for p in processes],
        "connections": sum(merged.get("active_connections", {}).values()),
        "tunnels": sum(merged.get("active_tunnels", {}).values()),
        "state_file": str(router.health.path),
        "state_file_age": merged.get("state_file_age_seconds", {}).get((), -1),
        "state_fresh": fresh,
        "routes_version": router.routes.table.version,
        "routes": len(router.routes.table),
        "apps": apps,
        "unrouted": {"requests": _sum(requests, app="-"),
                     "codes": {c: _sum(requests, app="-", code=c) for c in CODE_CLASSES}},
        "requests": sum(requests.values()),
        "rate": round(sum(rate_rows.values()), 2),
    }

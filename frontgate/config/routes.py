"""`[routes]` in mux-router.toml: where the dynamic route table lives (frontgate/routes.py).

    [routes]
    store = "file"                      # default: the table is `file`, edited by `frontgate route`
    # store = "redis://127.0.0.1:6379/0"               one table for a fleet
    # store = "sentinel://10.0.0.5:26379,10.0.0.6:26379/routes"   Sentinel: sentinels and master name
    file = "../state/routes.json"       # the table the router and the checker follow (with Redis:
                                        # this node's last good snapshot of it)
    password_file = "/etc/frontgate/redis.pass"   # Redis AUTH; readable by root and the broker only
    key = "frontgate:routes"            # Redis key prefix
    poll_interval = 2.0                 # seconds between version polls (besides the pub/sub hint)
    node = "edge-1"                     # this node's name in `route status` (default: the host name)

    [routes.self_service]               # the broker: users add routes for their own names and ports
    user_domains = ["{user}.apps.example.net", "*.{user}.apps.example.net"]
    socket = "../run/routes.sock"

Parsed here against the file's schema.Table (passed in by frontgate.config.router).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


@dataclass(frozen=True)
class SelfService:
    user_domains: tuple[str, ...]
    socket: Path


@dataclass(frozen=True)
class RoutesConfig:
    file: Path
    store: str = "file"
    password_file: Path | None = None
    key: str = "frontgate:routes"
    poll_interval: float = 2.0
    node: str = ""
    self_service: SelfService | None = None

    @property
    def shared(self) -> bool:
        """A Redis store: the file is this node's snapshot, written by `frontgate route sync`."""
        return self.store != "file"


def parse(root: Any, state_dir: Path) -> RoutesConfig:
    """`root`: the file's schema.Table."""
    t = root.table("routes")
    store = t.str("store", "file")
    if store != "file" and not store.startswith(_SCHEMES):
        raise t.error("store", f"{store!r}: \"file\", or a URL starting with {', '.join(_SCHEMES)}")
    if store.startswith("sentinel://") and "/" not in store[len("sentinel://"):]:
        raise t.error("store", f"{store!r}: sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME")
    cfg = RoutesConfig(
        file=t.path("file", None) or state_dir / "routes.json",
        store=store,
        password_file=t.path("password_file", None),
        key=t.str("key", "frontgate:routes"),
        poll_interval=t.positive_seconds("poll_interval", 2.0),
        node=t.str("node", "") or socket.gethostname(),
        self_service=_self_service(t) if "self_service" in t.data else None,
    )
    t.done()
    return cfg


def _self_service(t: Any) -> SelfService:
    s = t.table("self_service")
    domains = s.str_list("user_domains")
    for i, d in enumerate(domains):
        if "{user}" not in d:
            raise s.error(f"user_domains[{i}]", f"{d!r} must contain {{user}}: each user gets names of their own")
    service = SelfService(user_domains=domains, socket=s.path("socket", "../run/routes.sock"))
    s.done()
    return service

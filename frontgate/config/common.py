"""What the router's and the terminator's files share: [admin] (metrics and stats listener) and
`workers`."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from frontgate.config.schema import Address, Table


@dataclass(frozen=True)
class AdminConfig:
    """[admin]: the loopback listener for /metrics (Prometheus) and /stats (the HTML page)."""
    address: Address
    refresh: int = 5                   # the stats page reloads itself every this many seconds
    stats_dir: Path | None = None      # per-process snapshots, so that any worker answers for all


def admin_table(root: Table, default_stats_dir: Path) -> AdminConfig | None:
    """[admin]; absent: no admin listener. Metrics and the stats page are for the operator only,
    with no authentication, so the address must be a loopback one."""
    if "admin" not in root.data:
        root.used.add("admin")
        return None
    t = root.table("admin")
    address = t.address("address")
    if address.is_unix:
        raise t.error("address", f"{address}: must be a TCP loopback address (127.0.0.0/8 or [::1]), not a unix socket")
    try:
        loopback = ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise t.error("address", f"{address}: must be a loopback address (127.0.0.0/8 or [::1]); "
                                 "the admin listener has no authentication")
    admin = AdminConfig(address=address, refresh=t.int("refresh", 5, 1, 3600),
                        stats_dir=t.path("stats_dir", None) or default_stats_dir)
    t.done()
    return admin


MAX_WORKERS = 64


def workers_key(t: Table) -> int:
    """`workers`: a number, or "auto": as many as the CPUs this process may run on (HAProxy's and
    stunnel's default: every core)."""
    if t.data.get("workers") == "auto":
        t.used.add("workers")
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    if isinstance(t.data.get("workers"), str):
        raise t.error("workers", f"{t.data['workers']!r}: expected a number of processes or \"auto\"")
    return t.int("workers", 1, 1, MAX_WORKERS)

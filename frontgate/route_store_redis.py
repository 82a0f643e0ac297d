"""The fleet route store: one table in Redis, shared by every node.

Keys (prefix `[routes] key`, default `frontgate:routes`):
    PREFIX:table      hash: route key -> the route as JSON (routes.route_doc)
    PREFIX:version    the table's version, bumped by every change
    PREFIX:forced     the version last written with --force (nodes apply it past the shrink guard)
    PREFIX:changed    pub/sub channel: the new version, a hint only
    PREFIX:node:NAME  the version node NAME applied, as JSON, with a short expiry (a dead node's
                      record goes away; `route status` lists the live ones)

A change is one WATCH/MULTI transaction on the version: read the table, edit it, write the
difference and the new version. A writer that raced another retries from the new table, so both
changes land; after MAX_ATTEMPTS lost races it reports a clean conflict. Nothing is ever half written.
"""
from __future__ import annotations

import json
import time
from typing import Callable

import redis
from redis.sentinel import Sentinel

from frontgate import routes
from frontgate.route_store import StoreError, guarded
from frontgate.config.routes import RoutesConfig

MAX_ATTEMPTS = 8
SOCKET_TIMEOUT = 2.0
ERRORS = (redis.RedisError, OSError)      # every way the store can be unreachable or refuse


def connect(cfg: RoutesConfig) -> redis.Redis:
    """A client for `store`: a redis:// (rediss://, unix://) URL, or sentinel://H:P[,H:P]/MASTER,
    whose client finds the current master again after a failover."""
    password = cfg.password_file.read_text().strip() if cfg.password_file else None
    options = dict(socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, decode_responses=True,
                   health_check_interval=0)
    if cfg.store.startswith("sentinel://"):
        hosts, _, master = cfg.store[len("sentinel://"):].partition("/")
        sentinels = []
        for item in hosts.split(","):
            host, _, port = item.rpartition(":")
            sentinels.append((host, int(port)))
        return Sentinel(sentinels, socket_timeout=SOCKET_TIMEOUT,
                        socket_connect_timeout=SOCKET_TIMEOUT).master_for(master, password=password, **options)
    return redis.Redis.from_url(cfg.store, password=password, **options)


class Keys:
    def __init__(self, prefix: str):
        self.table, self.version, self.forced = f"{prefix}:table", f"{prefix}:version", f"{prefix}:forced"
        self.channel, self.node_prefix = f"{prefix}:changed", f"{prefix}:node:"


def table_from(version: str | None, forced: str | None, fields: dict[str, str]) -> routes.RouteTable:
    """The table from what Redis holds, validated whole: StoreError naming the bad route."""
    docs = []
    for key, text in fields.items():
        try:
            docs.append(json.loads(text))
        except ValueError:
            raise StoreError(f"route {key!r} in Redis is not JSON") from None
    try:
        return routes.loads(json.dumps({"format": routes.FORMAT, "version": int(version or 0),
                                        "forced": int(forced or 0), "routes": docs}))
    except (routes.RouteError, ValueError) as e:
        raise StoreError(f"the table in Redis is invalid: {e}") from None


class RedisStore:
    name = "redis"

    def __init__(self, cfg: RoutesConfig, client: redis.Redis | None = None):
        self.cfg = cfg
        self.keys = Keys(cfg.key)
        self.client = client or connect(cfg)

    def describe(self) -> str:
        return f"redis {self.cfg.store} (key {self.cfg.key})"

    def version(self) -> int:
        try:
            return int(self.client.get(self.keys.version) or 0)
        except ERRORS as e:
            raise StoreError(f"redis: {e}") from None

    def read(self) -> routes.RouteTable:
        """One consistent snapshot (MULTI/EXEC: no change lands between the three reads)."""
        try:
            with self.client.pipeline(transaction=True) as pipe:
                version, forced, fields = pipe.get(self.keys.version).get(self.keys.forced) \
                    .hgetall(self.keys.table).execute()
        except ERRORS as e:
            raise StoreError(f"redis: {e}") from None
        return table_from(version, forced, fields)

    def change(self, edit: Callable[[routes.RouteTable], routes.RouteTable], force: bool = False) -> routes.RouteTable:
        k = self.keys
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for _ in range(MAX_ATTEMPTS):
                    try:
                        pipe.watch(k.version)
                        old = table_from(pipe.get(k.version), pipe.get(k.forced), pipe.hgetall(k.table))
                        new = guarded(old, edit(old), force)
                        pipe.multi()
                        gone = [key for key in old.routes if key not in new.routes]
                        if gone:
                            pipe.hdel(k.table, *gone)
                        changed = {key: json.dumps(routes.route_doc(r)) for key, r in new.routes.items()
                                   if old.routes.get(key) != r}
                        if changed:
                            pipe.hset(k.table, mapping=changed)
                        pipe.set(k.version, new.version)
                        pipe.set(k.forced, new.forced)
                        pipe.execute()
                    except redis.WatchError:
                        continue              # another writer won this round: edit its table
                    self.client.publish(k.channel, new.version)
                    return new
        except ERRORS as e:
            raise StoreError(f"redis: {e}") from None
        raise StoreError(f"conflict: the table changed under {MAX_ATTEMPTS} attempts in a row; try again")

    # ---- nodes

    def record_node(self, node: str, version: int, refused: str, ttl: float) -> None:
        doc = {"version": version, "refused": refused, "at": round(time.time(), 3)}
        self.client.set(self.keys.node_prefix + node, json.dumps(doc), px=int(ttl * 1000))

    def node_records(self) -> dict[str, dict]:
        try:
            names = sorted(self.client.scan_iter(match=self.keys.node_prefix + "*", count=1000))
            values = self.client.mget(names) if names else []
        except ERRORS as e:
            raise StoreError(f"redis: {e}") from None
        records = {}
        for name, value in zip(names, values):
            if value is not None:
                try:
                    records[name[len(self.keys.node_prefix):]] = json.loads(value)
                except ValueError:
                    continue
        return records

    def node_versions(self) -> dict[str, int]:
        return {node: int(doc.get("version", 0)) for node, doc in self.node_records().items()}

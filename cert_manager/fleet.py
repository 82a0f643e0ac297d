"""cert-manager's Redis side in a fleet (keys and rules: cert_manager.fleet_rules): the per-name
lock, the shared http-01 tokens, the certificates, this node's record. Blocking (redis-py): the
daemon calls it in threads. The connection is the route store's (frontgate.route_store_redis).

The lock is redis-py's Lock: SET NX PX with this holder's own value, extended and deleted by Lua
scripts that first check the value is still ours, so a holder whose lock expired never deletes or
extends another node's.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from pathlib import Path

import redis
from redis.lock import Lock

from cert_manager import files
from cert_manager.fleet_rules import (
    LOCK_TTL,
    TOKENS_SPREAD_TIMEOUT,
    CertVersion,
    FleetKeys,
    lock_owner,
    nodes_missing,
    owner_node,
    to_install,
    tokens_ttl,
)
from frontgate.config.routes import RoutesConfig
from frontgate.route_store_redis import ERRORS, connect, json_records

log = logging.getLogger("cert-manager")

SPREAD_POLL = 0.05            # seconds between looks at the nodes' records while tokens spread


class Fleet:
    def __init__(self, routes: RoutesConfig, client: redis.Redis | None = None):
        self.routes = routes
        self.node = routes.node
        self.keys = FleetKeys(routes.key)
        self.client = client or connect(routes)
        self._installing = threading.Lock()     # the follower and an order may both adopt a name

    def describe(self) -> str:
        return f"redis {self.routes.store} (keys {self.keys.prefix}:*) as node {self.node}"

    def _changed(self, pipe) -> None:
        """Bump the version in the transaction `pipe`, run it, publish the hint."""
        pipe.incr(self.keys.version)
        version = pipe.execute()[-1]
        self.client.publish(self.keys.channel, version)

    def version(self) -> int:
        return int(self.client.get(self.keys.version) or 0)

    # ---- the lock

    def lock(self, name: str) -> Lock:
        return self.client.lock(self.keys.lock(name), timeout=LOCK_TTL, blocking=False, thread_local=False)

    def try_lock(self, lock: Lock) -> bool:
        return bool(lock.acquire(token=lock_owner(self.node, secrets.token_hex(16))))

    def holder(self, name: str) -> tuple[str, float | None]:
        """(the node holding the name's lock, seconds until it expires)."""
        with self.client.pipeline(transaction=False) as pipe:
            value, pttl = pipe.get(self.keys.lock(name)).pttl(self.keys.lock(name)).execute()
        return owner_node(value), (pttl / 1000 if pttl and pttl > 0 else None)

    @staticmethod
    def unlock(lock: Lock) -> None:
        try:
            lock.release()
        except redis.exceptions.LockError as e:     # expired (and maybe taken by another): not ours to delete
            log.warning("the lock %s had expired before the order ended: %s", lock.name, e)

    # ---- tokens

    def put_token(self, token: str, key_authorization: str, order_timeout: float) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.tokens, token, key_authorization)
            pipe.pexpire(self.keys.tokens, int(tokens_ttl(order_timeout) * 1000))
            self._changed(pipe)

    def remove_tokens(self, tokens: list[str]) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.tokens, *tokens)
            self._changed(pipe)

    def tokens(self) -> dict[str, str]:
        return self.client.hgetall(self.keys.tokens)

    def wait_for_tokens(self, tokens: list[str], timeout: float) -> list[str]:
        """Until every live node's challenge directory has `tokens` (their records say so), or
        `timeout`; the nodes still without them."""
        deadline = time.monotonic() + timeout
        while True:
            missing = nodes_missing(self.node_records(), tokens, self.node)
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(SPREAD_POLL)

    # ---- certificates

    def publish(self, name: str, data: bytes, cert: files.InUse) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.cert(name), mapping={
                "pem": data.decode("ascii"), "fingerprint": cert.fingerprint, "not_after": cert.not_after,
                "node": self.node, "at": round(time.time(), 3)})
            self._changed(pipe)

    def published(self, name: str) -> CertVersion | None:
        fingerprint, not_after = self.client.hmget(self.keys.cert(name), ["fingerprint", "not_after"])
        try:
            return CertVersion(fingerprint=fingerprint, not_after=float(not_after)) if fingerprint else None
        except (TypeError, ValueError):
            return None

    def adopt(self, name: str, certs_dir: Path, now: float) -> files.InUse | None:
        """Install the name's certificate from Redis into certs_dir when fleet_rules.to_install
        says so (checked whole first: the name's, with its key, the fingerprint announced); the
        certificate installed, None when nothing changed. ValueError for a damaged entry."""
        with self._installing:
            local = files.in_use(certs_dir, name)
            mine = CertVersion(local.fingerprint, local.not_after, local.covers) if local else None
            if not to_install(self.published(name), mine, now):
                return None
            pem, fingerprint = self.client.hmget(self.keys.cert(name), ["pem", "fingerprint"])
            data = (pem or "").encode("ascii")
            found = files.checked_bundle(data, name)
            if found.fingerprint != fingerprint:
                raise ValueError("the certificate is not the one its fingerprint announces")
            files.install_bundle(certs_dir, name, data)
            return found

    def install(self, certs_dir: Path, name: str, fullchain_pem: bytes, key) -> files.InUse:
        """files.install, never at the same time as the follower's adopt of a name."""
        with self._installing:
            return files.install(certs_dir, name, fullchain_pem, key)

    # ---- this node

    def record_node(self, tokens: list[str], certs: dict[str, str], ttl: float) -> None:
        doc = {"tokens": sorted(tokens), "certs": certs, "at": round(time.time(), 3)}
        self.client.set(self.keys.node(self.node), json.dumps(doc), px=int(ttl * 1000))

    def node_records(self) -> dict[str, dict]:
        return json_records(self.client, self.keys.node_prefix)


class FleetTokens:
    """The tokens of one order (acme_flow.Session.issue) in the fleet's hash: every node's
    follower mirrors them into its router's challenge directory; `ready` waits until all have."""

    def __init__(self, fleet: Fleet, order_timeout: float):
        self.fleet, self.order_timeout = fleet, order_timeout
        self.tokens: list[str] = []

    def put(self, token: str, key_authorization: str) -> None:
        self.fleet.put_token(token, key_authorization, self.order_timeout)
        self.tokens.append(token)

    def ready(self) -> None:
        missing = self.fleet.wait_for_tokens(self.tokens, TOKENS_SPREAD_TIMEOUT)
        if missing:
            log.warning("the tokens have not reached node(s) %s after %gs; asking the CA to validate anyway",
                        ", ".join(missing), TOKENS_SPREAD_TIMEOUT)

    def remove(self) -> None:
        if self.tokens:
            try:
                self.fleet.remove_tokens(self.tokens)
            except ERRORS as e:      # the hash's expiry removes them
                log.warning("cannot remove the tokens from redis (they expire): %s", e)
            self.tokens = []

"""cert-manager in a fleet, the decisions without the I/O: Redis key names, expiries, whose turn
it is, which tokens to write or remove, and whether a certificate in Redis replaces the one in
use. cert_manager.fleet does the Redis side, cert_manager.fleet_follow the following.

Keys, under PREFIX = the route store's key + ":acme" (so one Redis can hold several fleets):
    PREFIX:lock:NAME   who orders for NAME now: "NODE/RANDOM", SET NX PX, extended while the order
                       runs, deleted only by its owner; it expires if that node dies
    PREFIX:tokens      hash: http-01 token -> key authorization, while an order runs (with an expiry)
    PREFIX:cert:NAME   hash: the newest certificate of NAME (chain and key as installed, its
                       fingerprint, notAfter, the node that ordered it)
    PREFIX:version     bumped by every change of the tokens or a certificate
    PREFIX:changed     pub/sub channel: the version, a hint only
    PREFIX:node:NODE   JSON: the tokens the node's challenge directory holds, the fingerprints it
                       installed; with a short expiry
"""
from __future__ import annotations

from dataclasses import dataclass

from frontgate.acme_state import TOKEN_RE

LOCK_TTL = 30.0               # seconds a lock outlives a holder that stopped extending it
LOCK_EXTEND_EVERY = LOCK_TTL / 3
TOKENS_SPREAD_TIMEOUT = 10.0  # seconds the holder waits for every node's router to have the tokens
LOCKED_RECHECK_MIN = 2.0      # a node that found the lock taken looks again after at least this


class FleetKeys:
    def __init__(self, routes_key: str):
        self.prefix = f"{routes_key}:acme"
        self.tokens, self.version = f"{self.prefix}:tokens", f"{self.prefix}:version"
        self.channel, self.node_prefix = f"{self.prefix}:changed", f"{self.prefix}:node:"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def cert(self, name: str) -> str:
        return f"{self.prefix}:cert:{name}"

    def node(self, node: str) -> str:
        return self.node_prefix + node


def lock_owner(node: str, random_hex: str) -> str:
    """The lock's value: the node (for the other nodes' logs) and a random part (only this holder's)."""
    return f"{node}/{random_hex}"


def owner_node(value: str | None) -> str:
    """The node named by a lock's value ("?" when there is none)."""
    return (value.rpartition("/")[0] or "?") if value else "?"


def tokens_ttl(order_timeout: float) -> float:
    """The tokens hash's expiry, renewed at every write: one order's length and a lock's, so the
    tokens of a holder that died go away with its lock."""
    return order_timeout + LOCK_TTL


def recheck_after(lock_ttl_left: float | None) -> float:
    """Seconds until a node that found the lock taken tries again: when the lock would expire if
    its holder died (the certificate normally arrives before, through the follower)."""
    if lock_ttl_left is None or lock_ttl_left <= 0:
        return LOCKED_RECHECK_MIN
    return max(LOCKED_RECHECK_MIN, min(lock_ttl_left, LOCK_TTL))


def token_changes(wanted: dict[str, str], present: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """What makes a challenge directory holding `present` (token -> key authorization) hold
    `wanted` (from Redis): (files to write, files to remove). A field of the hash that is not a
    token is never written (it would name a path)."""
    wanted = {t: v for t, v in wanted.items() if TOKEN_RE.fullmatch(t)}
    write = {t: v for t, v in sorted(wanted.items()) if present.get(t) != v}
    remove = sorted(t for t in present if t not in wanted)
    return write, remove


def nodes_missing(records: dict[str, dict], tokens: list[str], own_node: str) -> list[str]:
    """The live nodes (their records, PREFIX:node:*) whose challenge directory lacks one of
    `tokens`; this node counts even before its record appears."""
    if own_node not in records:
        records = {**records, own_node: {}}
    return sorted(node for node, doc in records.items()
                  if not set(tokens) <= set(doc.get("tokens") or ()))


@dataclass(frozen=True)
class CertVersion:
    """A certificate as the install decision sees it (in Redis, or in use on this node)."""
    fingerprint: str          # sha256 of the leaf, hex
    not_after: float
    covers: bool = True       # its subjectAltName has the name


def to_install(published: CertVersion | None, local: CertVersion | None, now: float) -> bool:
    """Whether this node installs the certificate in Redis: it is still valid, covers the name,
    is not the one in use, and is newer (a later notAfter) than the one in use, if that covers
    the name. Never backwards: an older certificate in Redis is left alone."""
    if published is None or not published.covers or published.not_after <= now:
        return False
    if local is None or not local.covers:
        return True
    if published.fingerprint == local.fingerprint:
        return False
    return published.not_after > local.not_after

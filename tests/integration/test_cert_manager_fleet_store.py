"""cert-manager's Redis side (cert_manager.fleet) against a real redis-server, two nodes: the lock
is taken by one at a time, names its holder, expires, and is never released by a node it has
expired under; tokens come and go with the version bumped; a published certificate is installed
by the other node once, and a damaged entry never."""
from __future__ import annotations

import time

import pytest
import redis
import trustme

from cert_manager import files
from cert_manager.fleet import Fleet
from cert_manager.fleet_rules import LOCK_TTL, tokens_ttl
from frontgate.config.routes import RoutesConfig
from tests.helpers import wait_until
from tests.redis_fixtures import RedisServer

NAME = "shop.frontgate.test"


@pytest.fixture
def nodes(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    make = lambda node: Fleet(RoutesConfig(file=tmp_path / "routes.json", store=server.url, node=node))  # noqa: E731
    yield make("a"), make("b")
    server.stop()


def test_one_lock_holder_at_a_time_released_only_by_its_owner(nodes):
    a, b = nodes
    lock_a, lock_b = a.lock(NAME), b.lock(NAME)
    assert a.try_lock(lock_a)
    assert not b.try_lock(lock_b)
    holder, left = b.holder(NAME)
    assert holder == "a" and 0 < left <= LOCK_TTL
    # a's lock expires (a stopped extending it): b takes it; a's late release leaves b's alone.
    a.client.pexpire(a.keys.lock(NAME), 1)
    wait_until(lambda: b.try_lock(lock_b), timeout=5, interval=0.05, what="b taking the expired lock")
    a.unlock(lock_a)
    assert b.holder(NAME)[0] == "b"
    with pytest.raises(redis.exceptions.LockError):
        lock_a.extend(LOCK_TTL, True)       # nor extends it
    lock_b.extend(LOCK_TTL, True)
    assert b.client.pttl(b.keys.lock(NAME)) > (LOCK_TTL - 5) * 1000
    b.unlock(lock_b)
    assert b.client.get(b.keys.lock(NAME)) is None
    assert a.try_lock(a.lock(NAME))


def test_tokens_bump_the_version_and_expire(nodes):
    a, b = nodes
    before = b.version()
    a.put_token("tokA", "tokA.key", order_timeout=90)
    assert b.tokens() == {"tokA": "tokA.key"} and b.version() > before
    assert 0 < b.client.pttl(b.keys.tokens) <= tokens_ttl(90) * 1000
    a.remove_tokens(["tokA"])
    assert b.tokens() == {} and b.version() > before + 1


def test_node_records_say_which_tokens_each_has(nodes):
    a, b = nodes
    a.record_node(["t1"], {}, ttl=10)
    assert a.wait_for_tokens(["t1"], timeout=0.2) == []            # only a is live
    b.record_node([], {}, ttl=10)
    assert a.wait_for_tokens(["t1"], timeout=0.2) == ["b"]
    b.record_node(["t1", "t0"], {NAME: "ff"}, ttl=10)
    assert a.wait_for_tokens(["t1"], timeout=0.2) == []
    assert a.node_records()["b"]["certs"] == {NAME: "ff"}


def _bundle(ca: trustme.CA) -> bytes:
    leaf = ca.issue_cert(NAME)
    return b"".join(b.bytes() for b in leaf.cert_chain_pems) + leaf.private_key_pem.bytes()


def test_a_published_certificate_is_installed_once_a_damaged_one_never(nodes, tmp_path):
    a, b = nodes
    ca = trustme.CA()
    data = _bundle(ca)
    cert = files.checked_bundle(data, NAME)
    certs_b = tmp_path / "b-certs"
    assert b.adopt(NAME, certs_b, time.time()) is None               # nothing published yet
    a.publish(NAME, data, cert)
    assert b.adopt(NAME, certs_b, time.time()).fingerprint == cert.fingerprint
    assert (certs_b / f"{NAME}.pem").read_bytes() == data
    assert (certs_b / f"{NAME}.pem").stat().st_mode & 0o777 == 0o600
    assert b.adopt(NAME, certs_b, time.time()) is None               # in use already
    # A newer certificate whose entry announces another fingerprint: refused, the file untouched.
    newer = _bundle(ca)
    a.publish(NAME, newer, files.checked_bundle(newer, NAME))
    a.client.hset(a.keys.cert(NAME), "fingerprint", "00" * 32)
    a.client.hset(a.keys.cert(NAME), "not_after", cert.not_after + 10)
    with pytest.raises(ValueError, match="fingerprint"):
        b.adopt(NAME, certs_b, time.time())
    assert (certs_b / f"{NAME}.pem").read_bytes() == data

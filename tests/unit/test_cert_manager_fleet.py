"""cert-manager in a fleet, the pure parts: key names, expiries, the lock's owner, which tokens a
node writes or removes, which nodes lack them, whether a certificate from Redis is installed;
and the check of a bundle from another node before it is installed. No sockets."""
from __future__ import annotations

import pytest
import trustme

from cert_manager import files
from cert_manager.fleet_rules import (
    LOCK_TTL,
    LOCKED_RECHECK_MIN,
    CertVersion,
    FleetKeys,
    lock_owner,
    nodes_missing,
    owner_node,
    recheck_after,
    to_install,
    token_changes,
    tokens_ttl,
)
from frontgate.dev_ca import key_pem


def test_keys_live_under_the_route_stores_prefix():
    k = FleetKeys("frontgate:routes")
    assert (k.tokens, k.version, k.channel) == ("frontgate:routes:acme:tokens", "frontgate:routes:acme:version",
                                                "frontgate:routes:acme:changed")
    assert k.lock("shop.example.com") == "frontgate:routes:acme:lock:shop.example.com"
    assert k.cert("shop.example.com") == "frontgate:routes:acme:cert:shop.example.com"
    assert k.node("edge-1") == k.node_prefix + "edge-1" == "frontgate:routes:acme:node:edge-1"
    # Two fleets in one Redis (two route keys) never share a lock.
    assert FleetKeys("fleet-a").lock("x.test") != FleetKeys("fleet-b").lock("x.test")


@pytest.mark.parametrize("value, node", [
    (lock_owner("edge-1", "ab12"), "edge-1"),
    (lock_owner("10.0.0.5", "ff"), "10.0.0.5"),
    (None, "?"), ("", "?"), ("no-slash", "?"),
])
def test_owner_node(value, node):
    assert owner_node(value) == node


def test_owners_differ_by_their_random_part():
    assert lock_owner("edge-1", "aa") != lock_owner("edge-1", "bb")


@pytest.mark.parametrize("left, expected", [
    (None, LOCKED_RECHECK_MIN), (0.0, LOCKED_RECHECK_MIN), (-1.0, LOCKED_RECHECK_MIN),
    (0.5, LOCKED_RECHECK_MIN), (12.0, 12.0), (LOCK_TTL * 5, LOCK_TTL),
])
def test_recheck_after_a_taken_lock(left, expected):
    assert recheck_after(left) == expected


def test_tokens_outlive_an_order_and_a_lock():
    assert tokens_ttl(90) == 90 + LOCK_TTL


@pytest.mark.parametrize("case, wanted, present, write, remove", [
    ("nothing", {}, {}, {}, []),
    ("a new token", {"tokA": "tokA.x"}, {}, {"tokA": "tokA.x"}, []),
    ("already there", {"tokA": "tokA.x"}, {"tokA": "tokA.x"}, {}, []),
    ("changed content", {"tokA": "tokA.y"}, {"tokA": "tokA.x"}, {"tokA": "tokA.y"}, []),
    ("order ended", {}, {"tokA": "tokA.x", "tokB": "tokB.x"}, {}, ["tokA", "tokB"]),
    ("one in, one out", {"tokB": "tokB.x"}, {"tokA": "tokA.x"}, {"tokB": "tokB.x"}, ["tokA"]),
    ("a field that is no token is never written", {"../../etc/passwd": "x", "a/b": "y", "": "z", "ok": "ok.1"},
     {}, {"ok": "ok.1"}, []),
    ("too long", {"a" * 129: "x"}, {}, {}, []),
])
def test_token_changes(case, wanted, present, write, remove):
    assert token_changes(wanted, present) == (write, remove), case


@pytest.mark.parametrize("case, records, tokens, missing", [
    ("every node has them", {"n1": {"tokens": ["t1", "t2"]}, "n2": {"tokens": ["t2", "t1", "old"]}},
     ["t1", "t2"], []),
    ("one lacks one", {"n1": {"tokens": ["t1", "t2"]}, "n2": {"tokens": ["t1"]}}, ["t1", "t2"], ["n2"]),
    ("a record without tokens", {"n1": {"tokens": ["t1"]}, "n2": {}}, ["t1"], ["n2"]),
    ("this node counts before its record appears", {"n2": {"tokens": ["t1"]}}, ["t1"], ["n1"]),
    ("only this node", {}, ["t1"], ["n1"]),
    ("tokens null", {"n1": {"tokens": None}}, ["t1"], ["n1"]),
])
def test_nodes_missing(case, records, tokens, missing):
    assert nodes_missing(records, tokens, "n1") == missing, case


NOW = 1_000_000.0
NEW = CertVersion("aa", NOW + 90 * 86400)
OLD = CertVersion("bb", NOW + 30 * 86400)


@pytest.mark.parametrize("case, published, local, install", [
    ("nothing in Redis", None, OLD, False),
    ("nothing in use", NEW, None, True),
    ("newer than the one in use", NEW, OLD, True),
    ("older than the one in use: never backwards", OLD, NEW, False),
    ("the one in use", NEW, NEW, False),
    ("the one in use does not cover the name", OLD, CertVersion("cc", NOW + 99 * 86400, covers=False), True),
    ("expired in Redis", CertVersion("dd", NOW - 1), None, False),
    ("in Redis, not for the name", CertVersion("ee", NOW + 86400, covers=False), None, False),
    ("same notAfter, another certificate", CertVersion("ff", OLD.not_after), OLD, False),
])
def test_to_install(case, published, local, install):
    assert to_install(published, local, NOW) is install, case


# ---- the bundle another node published (cryptography, no sockets)

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def _bundle(ca, name: str, key_from=None) -> bytes:
    leaf = ca.issue_cert(name)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    key = (key_from or leaf).private_key_pem.bytes()
    return chain + key


def test_a_whole_bundle_passes_with_its_fingerprint(ca):
    data = _bundle(ca, "shop.example.com")
    found = files.checked_bundle(data, "shop.example.com")
    assert found.covers and len(found.fingerprint) == 64
    assert found.fingerprint == files.checked_bundle(data, "shop.example.com").fingerprint


@pytest.mark.parametrize("case, make, problem", [
    ("another name", lambda ca: _bundle(ca, "other.example.com"), "does not cover"),
    ("no key", lambda ca: _bundle(ca, "shop.example.com").split(b"-----BEGIN EC PRIVATE KEY")[0], "no private key"),
    ("another certificate's key", lambda ca: _bundle(ca, "shop.example.com", key_from=ca.issue_cert("x.test")),
     "not the certificate's"),
    ("not PEM", lambda ca: b"garbage", None),
])
def test_a_damaged_bundle_is_refused(ca, case, make, problem):
    with pytest.raises(ValueError, match=problem):
        files.checked_bundle(make(ca), "shop.example.com")


def test_bundle_is_what_install_writes(ca, tmp_path):
    from cryptography.hazmat.primitives import serialization
    leaf = ca.issue_cert("shop.example.com")
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    installed = files.install(tmp_path, "shop.example.com", chain, key)
    data = (tmp_path / "shop.example.com.pem").read_bytes()
    assert data == files.bundle(chain, key) and data.endswith(key_pem(key))
    assert files.checked_bundle(data, "shop.example.com").fingerprint == installed.fingerprint
    assert files.in_use(tmp_path, "shop.example.com").fingerprint == installed.fingerprint
    assert (tmp_path / "shop.example.com.pem").stat().st_mode & 0o777 == 0o600


def test_tokens_present_reads_only_token_files(tmp_path):
    files.put_token(tmp_path, "tokA", "tokA.x")
    (tmp_path / "not a token").write_text("x")
    (tmp_path / ".tokB.123.tmp").write_text("x")
    (tmp_path / "sub").mkdir()
    assert files.tokens_present(tmp_path) == {"tokA": "tokA.x"}
    assert files.tokens_present(tmp_path / "missing") == {}

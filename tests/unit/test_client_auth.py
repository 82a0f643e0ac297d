"""Client certificates declared once on the router's apps (frontgate.client_auth), the router's
decisions on them (routing.decide), and the config checks that keep the two stages agreeing."""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from frontgate import client_auth
from frontgate.client_auth import ClientCert
from frontgate.config import Address, App, ConfigError, Server, load_router_config
from mux_router.http1_request import parse_request_head
from mux_router.routing import Refusal, decide

SERVERS = (Server(Address.parse("127.0.0.1:1")),)
CA_A, CA_B = Path("/ca/a.pem"), Path("/ca/b.pem")


def app(name, hosts, cert=None, **kw):
    return App(name=name, hosts=tuple(hosts), servers=SERVERS, client_cert=cert, **kw)


SECURE = app("secure", ["secure.test", "*.internal.test"], ClientCert(CA_A))
OPTIONAL = app("opt", ["opt.test"], ClientCert(CA_A, "optional"))
OTHER_CA = app("other", ["other.test"], ClientCert(CA_B))
OPEN = app("open", ["open.test"])
APPS = (SECURE, OPTIONAL, OTHER_CA, OPEN)
INDEX = client_auth.rule_index(client_auth.terminator_rules(APPS))


def test_terminator_rules_one_per_ca_required_only_when_every_app_requires():
    rules = client_auth.terminator_rules(APPS)
    assert [(r.ca, r.sni, r.verify) for r in rules] == [
        (CA_A, ("secure.test", "*.internal.test", "opt.test"), "optional"),
        (CA_B, ("other.test",), "required")]
    assert client_auth.terminator_rules((SECURE, OPEN))[0].verify == "required"
    assert client_auth.terminator_rules((OPEN,)) == ()


@pytest.mark.parametrize("the_app,sni,verified,host,refused", [
    (SECURE, "secure.test", True, "secure.test", None),
    (SECURE, "a.internal.test", True, "a.internal.test", None),
    (SECURE, "secure.test", False, "secure.test", 403),             # the right name, no certificate
    (SECURE, None, False, "secure.test", 421),                      # no SNI (or an IP literal)
    (SECURE, "open.test", False, "secure.test", 421),               # another name's connection
    (SECURE, "secure.test", True, "a.internal.test", 421),          # verified for another name
    (SECURE, "other.test", True, "secure.test", 421),
    (SECURE, "secure.test", True, None, 421),                       # no Host: nothing it was verified for
    (OTHER_CA, "other.test", True, "other.test", None),
    (OPTIONAL, None, False, "opt.test", None),                      # optional: never refused
    (OPEN, None, False, "open.test", None),
])
def test_refusal(the_app, sni, verified, host, refused):
    result = client_auth.refusal(the_app, INDEX, sni, verified, host)
    assert (result[0] if result else None) == refused


def test_certified_needs_the_apps_own_ca():
    # A certificate verified against CA B's rule says nothing to an app that trusts CA A.
    confused = app("confused", ["other.test"], ClientCert(CA_A))
    assert not client_auth.certified(confused, INDEX, "other.test", True, "other.test")
    assert client_auth.certified(OTHER_CA, INDEX, "other.test", True, "other.test")
    assert not client_auth.certified(OPEN, INDEX, "open.test", True, "open.test")


@pytest.mark.parametrize("apps,problem", [
    ((SECURE, app("all", ["**.test"])), "meets app 'all'"),
    ((SECURE, app("wild", ["*.test"])), "meets app 'wild'"),               # *.test covers secure.test
    ((SECURE, app("wild", ["*.open.test"])), None),
    ((SECURE, app("same", ["secure.test"])), "no client_ca"),
    ((SECURE, app("b", ["x.internal.test"], ClientCert(CA_B))), "client_ca '/ca/b.pem'"),
    ((SECURE, app("a2", ["x.internal.test"], ClientCert(CA_A, "optional"))), None),   # same CA: one rule
    ((SECURE, app("rx", [], host_regex=re.compile(r".*\.internal\.test"))), "meets app 'rx'"),
    ((SECURE, app("rx", [], host_regex=re.compile(r"nothing"))), None),
    ((SECURE, app("fallback", [], default=True)), None),
    ((app("deep", ["**.x.test"], ClientCert(CA_A)),), "only exact hosts"),
    ((app("d", ["d.test"], ClientCert(CA_A), default=True),), "only exact hosts"),
])
def test_disagreements(apps, problem):
    found = client_auth.disagreements(apps)
    if problem is None:
        assert found == []
    else:
        assert found and problem in found[0][1], found


# --------------------------------------------------------------------------- routing.decide

ROUTER = """
[router]
state_file = "state/health.json"
trusted_sources = ["127.0.0.1/32"]
[listen.tls]
address = "127.0.0.1:8443"
proxy_protocol = true
scheme = "https"
[[app]]
name = "secure"
hosts = ["secure.test"]
client_ca = "ca.pem"
servers = ["127.0.0.1:1"]
acl = [{ path_prefix = "/admin", allow = ["trusted"] }]
[[app]]
name = "open"
hosts = ["open.test", "**.deep.test"]
servers = ["127.0.0.1:2"]
"""


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "r.toml").write_text(ROUTER)
    return load_router_config(tmp_path / "r.toml")


def _decide(cfg, host, sni, verified, path="/", source="192.0.2.1", sni_check=None):
    head = parse_request_head(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())[0]
    result = decide(cfg, head, listener="tls", client_ip=ipaddress.ip_address(source), sni_check=sni_check,
                    sni=sni, cert_verified=verified)
    return result.status if isinstance(result, Refusal) else result.name


@pytest.mark.parametrize("host,sni,verified,path,sni_check,expected", [
    ("secure.test", "secure.test", True, "/", None, "secure"),
    ("Secure.Test.", "secure.test", True, "/", None, "secure"),
    ("secure.test:443", "secure.test", True, "/", None, "secure"),
    ("secure.test", None, False, "/", None, 421),
    ("secure.test", "open.test", False, "/", None, 421),
    ("secure.test", "secure.test", False, "/", None, 403),
    ("secure.test", "secure.test", True, "/admin", None, 403),     # certified, then the ACL still judges
    ("open.test", None, False, "/", None, "open"),
    ("a.b.deep.test", None, False, "/", None, "open"),
    ("open.test", "secure.test", True, "/", "secure.test", 421),    # the listener's own SNI check
    ("nobody.test", None, False, "/", None, 404),
])
def test_decide(cfg, host, sni, verified, path, sni_check, expected):
    assert _decide(cfg, host, sni, verified, path, sni_check=sni_check) == expected


@pytest.mark.parametrize("extra,problem", [
    ('[[app]]\nname = "all"\nhosts = ["**.test"]\nservers = ["127.0.0.1:3"]\n', "one name must have one"),
    ('[[app]]\nname = "x"\nhosts = ["x.test"]\nclient_cert = "optional"\nservers = ["127.0.0.1:3"]\n',
     "needs client_ca"),
    ('[[app]]\nname = "x"\nhosts = ["x.test"]\nclient_ca = "missing.pem"\nservers = ["127.0.0.1:3"]\n', "not found"),
    ('[[app]]\nname = "x"\nhosts = ["x.test"]\nclient_ca = "ca.pem"\nclient_cert = "maybe"\n'
     'servers = ["127.0.0.1:3"]\n', "is not one of"),
])
def test_router_config_refuses_declarations_the_stages_could_read_differently(tmp_path, extra, problem):
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "r.toml").write_text(ROUTER + extra)
    with pytest.raises(ConfigError) as e:
        load_router_config(tmp_path / "r.toml")
    assert str(tmp_path / "r.toml") in str(e.value) and problem in e.value.problem, str(e.value)
    assert e.value.key.startswith("app[")

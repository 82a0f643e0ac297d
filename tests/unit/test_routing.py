"""mux_router.routing: app selection by host and path prefix, redirect rules."""
from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontgate.config import Address, App, RedirectRule, Server, load_router_config
from frontgate.addresses import parse_ip
from mux_router.http1_request import parse_request_head
from mux_router.routing import (Refusal, any_host_matches, decide, find_redirect, ip_in, misdirected, select_app,
                                sni_host)


def app(name, hosts, prefix="/"):
    return App(name=name, hosts=tuple(hosts), path_prefix=prefix,
               servers=(Server(Address.parse("127.0.0.1:1")),))


APPS = (
    app("maps-api", ["maps.localhost"], "/api/"),
    app("maps", ["maps.localhost"]),
    app("coltrane", ["coltrane.localhost", "*.coltrane.localhost"]),
    app("deep", ["**.deep.localhost"]),
    app("admin", ["*.localhost"], "/admin"),
)


@pytest.mark.parametrize("host,path,expected", [
    ("maps.localhost", "/", "maps"),
    ("maps.localhost", "/api/v1", "maps-api"),          # first match in file order
    ("maps.localhost", "/api", "maps"),                 # "/api/" is not a prefix of "/api"
    ("MAPS.localhost", "/", "maps"),                    # case-insensitive
    ("coltrane.localhost", "/x", "coltrane"),
    ("a.coltrane.localhost", "/", "coltrane"),          # wildcard
    ("a.b.coltrane.localhost", "/", None),              # "*." is one label (RFC 6125), as for certificates
    ("a.b.deep.localhost", "/", "deep"),                # "**." is any depth
    ("deep.localhost", "/", None),
    ("xcoltrane.localhost", "/", None),                 # not a label boundary
    ("other.localhost", "/admin/users", "admin"),
    ("other.localhost", "/", None),
    ("localhost", "/admin", None),                      # "*.localhost" needs a label before
    ("nobody.example", "/", None),
    (None, "/", None),                                  # no Host (HTTP/1.0)
])
def test_select_app(host, path, expected):
    chosen = select_app(APPS, host, path)
    assert (chosen.name if chosen else None) == expected


def test_any_host_matches():
    assert any_host_matches(["a.b"], "a.b") and not any_host_matches(["a.b"], "x.a.b")
    assert any_host_matches(["*.a.b"], "x.a.b") and not any_host_matches(["*.a.b"], "a.b")
    assert not any_host_matches(["*.a.b"], "y.x.a.b") and any_host_matches(["**.a.b"], "y.x.a.b")
    assert not any_host_matches(["a"], None)


def test_parse_ip_and_ip_in():
    assert parse_ip("::ffff:127.0.0.2") == ipaddress.ip_address("127.0.0.2")
    assert parse_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_ip("") is None and parse_ip("unix") is None
    nets = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    assert ip_in(parse_ip("127.0.0.1"), nets) and ip_in(parse_ip("::1"), nets)
    assert not ip_in(parse_ip("127.0.0.2"), nets) and not ip_in(None, nets)


TRUSTED = (ipaddress.ip_network("127.0.0.1/32"),)


def redirect(rules, listener="public", ip="127.0.0.2", host="maps.localhost", host_as_sent=None,
             target="/a?b=1"):
    return find_redirect(rules, listener=listener, client_ip=parse_ip(ip), host=host,
                         host_as_sent=host if host_as_sent is None else host_as_sent, target=target)


def test_to_scheme_redirect_for_untrusted_sources_only():
    rules = (RedirectRule(code=301, listeners=("public",), source_not_in=TRUSTED, to_scheme="https"),)
    assert redirect(rules) == (301, "https://maps.localhost/a?b=1")
    assert redirect(rules, ip="127.0.0.1") is None
    assert redirect(rules, listener="from_terminator") is None
    # The Host header is kept as sent (case, port), as HAProxy's `redirect scheme` does.
    assert redirect(rules, host="maps.localhost", host_as_sent="Maps.localhost:8080") == \
        (301, "https://Maps.localhost:8080/a?b=1")
    # Without a Host there is nowhere to redirect to: the rule does not apply.
    assert redirect(rules, host=None, host_as_sent="") is None


def test_prefix_location_and_conditions():
    rules = (
        RedirectRule(code=302, hosts=("*.old.example",), prefix="https://new.example/"),
        RedirectRule(code=308, source_in=(ipaddress.ip_network("10.0.0.0/8"),), location="https://fixed.example/x"),
        RedirectRule(code=307, hosts=("root.example",), prefix="/"),
    )
    assert redirect(rules, host="a.old.example", target="/p?q") == (302, "https://new.example/p?q")
    assert redirect(rules, host="old.example") is None
    assert redirect(rules, ip="10.1.2.3", host="x") == (308, "https://fixed.example/x")
    assert redirect(rules, host="root.example", target="/p") == (307, "/p")
    # First matching rule wins.
    assert redirect(rules, ip="10.1.2.3", host="a.old.example")[0] == 302


REDIRECT_KINDS = {
    "relative prefix": RedirectRule(code=302, prefix="/"),
    "relative prefix with a path": RedirectRule(code=302, prefix="/base/"),
    "absolute prefix": RedirectRule(code=302, prefix="https://new.example"),
    "to_scheme": RedirectRule(code=301, to_scheme="https"),
    "location": RedirectRule(code=302, location="/moved"),
}
# Targets that would name another host if appended as they are (the parser never passes them: a
# normalised target starts with one slash; find_redirect holds without it).
HOSTILE_TARGETS = ["//evil.example/x", "///evil.example/x", "/\\evil.example/x", "/\\/evil.example",
                   "evil.example/x", "//evil.example"]


@pytest.mark.parametrize("kind", REDIRECT_KINDS)
@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_no_redirect_names_a_host_the_rule_did_not(kind, target):
    code, location = redirect((REDIRECT_KINDS[kind],), host="maps.localhost", target=target)
    if location.startswith("https://"):
        authority = location[len("https://"):].split("/", 1)[0]
        assert authority in ("new.example", "maps.localhost"), (kind, target, location)
    else:
        assert location.startswith("/") and location[1:2] not in ("/", "\\"), (kind, target, location)


# --------------------------------------------------------------------------- regex, header, default, ACLs

from frontgate.config import Acl, HeaderMatch  # noqa: E402
from mux_router.routing import acl_allows  # noqa: E402

SERVERS = (Server(Address.parse("127.0.0.1:1")),)
RICH = (
    App(name="beta", hosts=("maps.localhost",), servers=SERVERS,
        header=HeaderMatch("x-env", re.compile(r"^beta$"))),
    App(name="tiles", hosts=(), host_regex=re.compile(r"tiles[0-9]+\.maps\.localhost"), servers=SERVERS),
    App(name="images", hosts=("maps.localhost",), path_regex=re.compile(r"\.(png|jpe?g)$"), servers=SERVERS),
    App(name="fallback", hosts=(), default=True, servers=SERVERS),
    App(name="maps", hosts=("maps.localhost",), servers=SERVERS),
)


@pytest.mark.parametrize("host,path,headers,expected", [
    ("maps.localhost", "/", ((b"X-Env", b"beta"),), "beta"),
    ("maps.localhost", "/", ((b"x-env", b"prod"),), "maps"),
    ("maps.localhost", "/a/b.png", (), "images"),
    ("maps.localhost", "/a/b.png.txt", (), "maps"),
    ("tiles12.maps.localhost", "/", (), "tiles"),
    ("tiles12.maps.localhost.evil", "/", (), "fallback"),          # regex is a full match
    ("nobody.localhost", "/", (), "fallback"),                      # the default app, though not last
    (None, "/", (), "fallback"),
])
def test_regex_header_and_default_routing(host, path, headers, expected):
    assert select_app(RICH, host, path, headers).name == expected


def test_no_default_app_means_none():
    assert select_app(RICH[:3], "nobody.localhost", "/") is None


def test_acls_first_matching_path_decides():
    nets = lambda *c: tuple(ipaddress.ip_network(x) for x in c)   # noqa: E731
    a = App(name="a", hosts=("a",), servers=SERVERS, acls=(
        Acl(path_prefix="/admin", allow=nets("10.0.0.0/8")),
        Acl(path_prefix="/", deny=nets("192.0.2.0/24")),
    ))
    ip = parse_ip
    assert acl_allows(a, ip("10.1.2.3"), "/admin/x") and not acl_allows(a, ip("192.168.0.1"), "/admin")
    assert not acl_allows(a, ip("192.0.2.9"), "/public") and acl_allows(a, ip("192.168.0.1"), "/public")
    assert not acl_allows(a, None, "/admin")                        # no IP is in no CIDR
    assert acl_allows(App(name="b", hosts=("b",), servers=SERVERS), ip("192.0.2.9"), "/")


@pytest.mark.parametrize("authority, expected", [
    ("a.localhost", "a.localhost"), ("A.LocalHost.", "a.localhost"), (None, None), ("", None),
    ("127.0.0.1", None), ("::1", None),      # an IP literal is not a server name (RFC 6066): no check
    # not names (a terminator refuses them): nothing any Host equals
    (".", "<invalid server name>"), ("a.localhost..", "<invalid server name>"), ("a\nb", "<invalid server name>")])
def test_sni_host_is_normalised_like_the_request_host(authority, expected):
    assert sni_host(authority) == expected


@pytest.mark.parametrize("sni, host, expected", [
    ("a.localhost", "a.localhost", False),
    ("a.localhost", "b.localhost", True),
    ("a.localhost", "x.a.localhost", True),      # no wildcard: exactly the name the client asked for
    ("a.localhost", None, False),                # HTTP/1.0 without Host: nothing to compare
    (None, "b.localhost", False),                # no SNI (or the check is off): no check
])
def test_misdirected(sni, host, expected):
    assert misdirected(sni, host) is expected


def test_misdirected_with_hosts_as_the_parser_gives_them():
    from mux_router.http1_request import parse_request_head
    sni = sni_host("A.Localhost")
    for host_field in ("a.localhost", "A.LOCALHOST:8443", "a.localhost.", "a.localhost.:443"):
        h = parse_request_head(f"GET / HTTP/1.1\r\nHost: {host_field}\r\n\r\n".encode())[0]
        assert not misdirected(sni, h.host), host_field
    h = parse_request_head(b"GET http://b.localhost/x HTTP/1.1\r\nHost: b.localhost\r\n\r\n")[0]
    assert misdirected(sni, h.host)


# --------------------------------------------------------------------------- routing by host index

def _select_by_scan(apps, host, path, headers=()):
    """The plain definition select_app's per-host index must agree with: every app in file order."""
    from mux_router.routing import host_conditions_hold, other_conditions_hold
    host = host.lower() if host is not None else None
    default = None
    for a in apps:
        if a.default:
            default = a
            if not a.hosts and a.host_regex is None:
                continue
        if host_conditions_hold(a, host) and other_conditions_hold(a, path, headers):
            return a
    return default


_HOST_PATTERNS = ("a.x", "b.x", "*.x", "*.a.x", "x", "**.x")
_HOSTS = ("a.x", "b.x", "c.a.x", "d.c.a.x", "x", "A.X", "y", ".x", "a..x", None)
_PATHS = ("/", "/a", "/a/b", "/b.png")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(_HOST_PATTERNS), max_size=2),
                          st.sampled_from((None, r"[ab]\.x")), st.sampled_from(("/", "/a", "/a/b")),
                          st.sampled_from((None, r"\.png$")), st.booleans()), max_size=6),
       st.sampled_from(_HOSTS), st.sampled_from(_PATHS))
def test_the_host_index_chooses_what_a_scan_of_every_app_chooses(specs, host, path):
    apps, has_default = [], False
    for i, (hosts, host_regex, prefix, path_regex, default) in enumerate(specs):
        default = default and not has_default        # the config allows one
        has_default = has_default or default
        apps.append(App(name=f"app{i}", hosts=tuple(hosts), path_prefix=prefix, servers=SERVERS, default=default,
                        host_regex=re.compile(host_regex) if host_regex else None,
                        path_regex=re.compile(path_regex) if path_regex else None))
    apps = tuple(apps)
    for _ in range(2):                                  # worked out, then looked up
        assert select_app(apps, host, path) is _select_by_scan(apps, host, path)


def test_many_apps_and_many_hosts_and_a_reload():
    from mux_router.routing import _AppsByHost
    apps = tuple(app(f"app{i}", [f"app{i}.localhost"]) for i in range(200))
    assert select_app(apps, "app199.localhost", "/").name == "app199"
    assert select_app(apps, "app0.localhost", "/").name == "app0"
    # Endless client-made names: the memo starts over when full, and answers stay right.
    for i in range(_AppsByHost.MAX_HOSTS + 10):
        assert select_app(apps, f"nobody{i}.localhost", "/") is None
    assert select_app(apps, "app7.localhost", "/").name == "app7"
    # A reload's apps (a new tuple) get their own index.
    reloaded = (app("moved", ["app7.localhost"]),) + apps
    assert select_app(reloaded, "app7.localhost", "/").name == "moved"
    assert select_app(apps, "app7.localhost", "/").name == "app7"


UPGRADE = (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n")


@pytest.mark.parametrize("websocket, fields, expected", [
    ("", UPGRADE, "chat"),                       # the default: upgrades tunnelled, as HAProxy and Traefik do
    ("websocket = true", UPGRADE, "chat"),
    ("websocket = false", UPGRADE, 403),         # refused, never forwarded
    ("websocket = false", b"", "chat"),          # plain requests are not affected
])
def test_decide_refuses_an_upgrade_where_the_app_turned_websocket_off(tmp_path, websocket, fields, expected):
    (tmp_path / "r.toml").write_text(f"""
[router]
state_file = "state/health.json"
[listen.public]
address = "127.0.0.1:8080"
[[app]]
name = "chat"
hosts = ["chat.test"]
servers = ["127.0.0.1:1"]
{websocket}
""")
    head = parse_request_head(b"GET /socket HTTP/1.1\r\nHost: chat.test\r\n" + fields + b"\r\n")[0]
    result = decide(load_router_config(tmp_path / "r.toml"), head, listener="public",
                    client_ip=ipaddress.ip_address("192.0.2.1"), sni_check=None, sni=None, cert_verified=False)
    outcome = (result.status, result.app.name) if isinstance(result, Refusal) else result.name
    assert outcome == (expected if isinstance(expected, str) else (expected, "chat"))


def test_a_new_host_among_10000_apps_is_found_without_trying_each_app(monkeypatch):
    """Dynamic routes put 10,000 apps in one config; a host first seen must not cost a check of
    every app's hosts (16 ms a host when it did: a client varying the Host starved the router)."""
    from mux_router import routing
    apps = tuple(app(f"r{i}", [f"r{i}.bench.localhost"]) for i in range(10_000))
    apps += (app("wild", ["*.w.localhost"]), app("deep", ["**.d.localhost"]),
             App(name="re", hosts=(), host_regex=re.compile(r"re\d+\.localhost"), servers=SERVERS), app("any", []))
    expected = {host: _select_by_scan(apps, host, "/") for host in
                ("r0.bench.localhost", "r9999.bench.localhost", "a.w.localhost", "a.b.d.localhost", "re7.localhost",
                 "nobody.localhost", None)}
    def no_scan(*args):
        raise AssertionError("host_conditions_hold asked app by app")
    monkeypatch.setattr(routing, "host_conditions_hold", no_scan)
    monkeypatch.setattr(routing, "any_host_matches", no_scan)
    for host, chosen in expected.items():
        assert select_app(apps, host, "/") is chosen, host
    assert [select_app(apps, f"r{i}.bench.localhost", "/").name for i in range(0, 10_000, 7)] == [
        f"r{i}" for i in range(0, 10_000, 7)]

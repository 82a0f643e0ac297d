"""`frontgate explain`: table-driven against the shipped configs and a test config with every
kind of condition (path prefix, header, ACL, client certificate, balancers, health state)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import trustme

from frontgate import health_state
from frontgate_ops.cli import main
from frontgate_ops.explain import ExplainError, Question, explain, format_explanation

SHIPPED = Path(__file__).resolve().parents[2] / "configs"

ROUTER = """
[router]
state_file = "state/health.json"
trusted_sources = ["10.0.0.0/8"]
[listen.public]
address = "127.0.0.1:8080"
[listen.tls]
address = "127.0.0.1:8443"
proxy_protocol = true
scheme = "https"
[[redirect]]
listener = "public"
hosts = ["old.localhost"]
prefix = "https://new.localhost"
code = 308
[[app]]
name = "api"
hosts = ["shop.localhost"]
path_prefix = "/api"
acl = [{ path_prefix = "/api/admin", allow = ["trusted"] }]
request_headers = { set = { X-App = "api" } }
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
[[app]]
name = "beta"
hosts = ["shop.localhost"]
header = { name = "X-Env", regex = "^beta$" }
servers = ["127.0.0.1:9003"]
[[app]]
name = "shop"
hosts = ["shop.localhost", "*.shop.localhost"]
balance = "source"
servers = ["127.0.0.1:9004", "127.0.0.1:9005"]
[[app]]
name = "vault"
hosts = ["vault.localhost"]
client_ca = "clients-ca.pem"
servers = ["127.0.0.1:9006"]
[[app]]
name = "fallback"
default = true
servers = ["127.0.0.1:9007"]
"""

TERMINATOR = """
[terminator]
listen = "127.0.0.1:9443"
forward_to = "127.0.0.1:8443"
router_config = "mux-router.toml"
[[certificate]]
cert = "shop.pem"
default = true
[[certificate]]
cert = "vault.pem"
[[passthrough]]
sni = "raw.localhost"
backend = "127.0.0.1:9999"
"""


def _cert(ca: trustme.CA, path: Path, *names: str) -> None:
    ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(path))
    path.chmod(0o600)


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("explain")
    ca = trustme.CA()
    _cert(ca, d / "shop.pem", "shop.localhost", "*.shop.localhost")
    _cert(ca, d / "vault.pem", "vault.localhost")
    (d / "clients-ca.pem").write_bytes(trustme.CA().cert_pem.bytes())
    (d / "mux-router.toml").write_text(ROUTER)
    (d / "tls-terminator.toml").write_text(TERMINATOR)
    (d / "state").mkdir()
    # (fresh for 25 s: state_stale_after is 15.) 9001 is down; 9004 too (the source hash then moves its clients to 9005).
    servers = {key: health_state.ServerState(state="down" if key.endswith(("9001", "9004")) else "up",
                                             since=time.time(), last_check={"ok": True, "took_ms": 1.0, "detail": "x"})
               for key in ("api/127.0.0.1:9001", "api/127.0.0.1:9002", "shop/127.0.0.1:9004",
                           "shop/127.0.0.1:9005")}
    health_state.write_atomic(d / "state" / "health.json", health_state.HealthState(
        generation=1, written_at=time.time() + 10, checker_pid=1, servers=servers))
    return d


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """The shipped configs as they are, with the development certificate they name."""
    root = tmp_path_factory.mktemp("shipped")
    shutil.copytree(SHIPPED, root / "configs")
    (root / "certs").mkdir()
    _cert(trustme.CA(), root / "certs" / "dev.pem", "maps.localhost", "coltrane.localhost", "*.coltrane.localhost")
    return root / "configs"


def _get(out: dict, path: str):
    for part in path.split("."):
        out = out[int(part)] if isinstance(out, list) else out[part]
    return out


SHIPPED_CASES = [
    # (url, options, expected {dotted path: value})
    ("http://maps.localhost/x?y=1", {}, {"listener.name": "public", "decision.outcome": "redirect",
                                        "decision.status": 301, "decision.location": "https://maps.localhost/x?y=1"}),
    ("http://maps.localhost/x", {"client_ip": "127.0.0.1"}, {"decision.outcome": "forward", "app": "maps",
                                                            "decision.server": "127.0.0.1:3000"}),
    ("https://maps.localhost/a/../b", {}, {"listener.name": "from_terminator", "request.path": "/b",
                                          "app": "maps", "terminator.certificate.matches_sni": True,
                                          "terminator.client_certificate": "not asked for"}),
    ("https://x.coltrane.localhost/", {}, {"app": "coltrane", "apps.0.verdict":
                                          "host 'x.coltrane.localhost' does not match maps.localhost"}),
    ("https://coltrane.localhost/", {"sni": "maps.localhost"}, {"decision.outcome": "misdirected (421)",
                                                               "decision.status": 421}),
    ("https://nowhere.localhost/", {}, {"decision.status": 404, "terminator.certificate.matches_sni": False}),
]


@pytest.mark.parametrize("url,options,expected", SHIPPED_CASES)
def test_explain_the_shipped_configs(shipped, url, options, expected):
    out = explain(shipped, Question(url=url, **options))
    for path, value in expected.items():
        assert _get(out, path) == value, (path, out)


CASES = [
    # A redirect rule of the plain listener, before any app.
    ("http://old.localhost:8080/p?q", {}, {"decision.location": "https://new.localhost/p?q", "decision.status": 308,
                                          "apps.0.verdict": "not reached: redirected first"}),
    # Host matched, path prefix did not: said so; the header app did not match either.
    ("http://shop.localhost:8080/cart", {}, {
        "app": "shop", "apps.0.verdict": "host matches; path '/cart' does not start with path_prefix '/api'",
        "apps.1.verdict": "host and path match; header x-env does not match '^beta$'",
        "apps.4.verdict": "the default app: serves only what no other app matches"}),
    ("http://shop.localhost:8080/cart", {"headers": (("X-Env", "beta"),)}, {
        "app": "beta", "apps.2.verdict": "matches, but an earlier app was chosen"}),
    # The server that is down is skipped; the weighted one picked, its head has the app's header.
    ("http://shop.localhost:8080/api/x", {}, {"app": "api", "acl": "allowed", "servers.0.health": "down",
                                             "servers.0.order": None, "servers.1.picked": True,
                                             "decision.server": "127.0.0.1:9002"}),
    ("http://shop.localhost:8080/api/admin/users", {}, {"decision.status": 403, "app": "api"}),
    ("http://shop.localhost:8080/api/admin/users", {"client_ip": "10.1.2.3"}, {"acl": "allowed",
                                                                              "decision.outcome": "forward"}),
    # Source hashing: the server that is down never gets picked.
    ("http://a.shop.localhost:8080/", {"client_ip": "198.51.100.7"}, {"app": "shop",
                                                                     "decision.server": "127.0.0.1:9005"}),
    # No such host: the default app.
    ("http://other.localhost:8080/", {}, {"app": "fallback", "servers.0.health": "not checked yet"}),
    # The terminator: certificate by SNI, the client certificate demanded, the router's verdict.
    ("https://vault.localhost/", {}, {"terminator.client_certificate": "required", "listener.name": "tls",
                                      "terminator.certificate.names": ["vault.localhost"],
                                      "decision.status": 403}),
    ("https://vault.localhost/", {"client_cert": "alice"}, {"decision.outcome": "forward", "app": "vault"}),
    ("https://shop.localhost/", {"sni": "vault.localhost"}, {"decision.status": 421}),
    ("https://unknown.localhost/", {}, {"terminator.certificate.default": True,
                                        "terminator.certificate.matches_sni": False}),
    ("https://raw.localhost/", {}, {"terminator.passthrough.backend": "127.0.0.1:9999"}),
    # The parser's own refusals.
    ("http://shop.localhost:8080/", {"method": "CONNECT"}, {"decision.status": 501}),
]


@pytest.mark.parametrize("url,options,expected", CASES)
def test_explain(configs, url, options, expected):
    out = explain(configs, Question(url=url, **options))
    for path, value in expected.items():
        assert _get(out, path) == value, (path, json.dumps(out, indent=1))
    format_explanation(out)      # every outcome has a text form


def test_the_backend_head_is_the_routers(configs):
    out = explain(configs, Question(url="https://vault.localhost/a/%2e%2e/b", client_cert="alice",
                                    headers=(("X-Forwarded-For", "6.6.6.6"), ("X-App", "forged"))))
    head = out["backend_head"].split("\r\n")
    assert head[0] == "GET /b HTTP/1.1"
    assert "X-Forwarded-For: 192.0.2.1" in head and "X-Forwarded-Proto: https" in head
    assert "X-Client-Cert-Subject: alice" in head and not any("6.6.6.6" in line for line in head)
    api = explain(configs, Question(url="http://shop.localhost:8080/api", headers=(("X-App", "forged"),)))
    assert "X-App: api" in api["backend_head"] and "forged" not in api["backend_head"]


@pytest.mark.parametrize("url,options,problem", [
    ("ftp://x/", {}, "expected an http:// or https:// URL"),
    ("http://x/", {"client_ip": "nope"}, "is not an IP address"),
    ("http://x/", {"listener": "nope"}, "no such listener"),
])
def test_questions_that_cannot_be_asked(configs, url, options, problem):
    with pytest.raises(ExplainError, match=problem):
        explain(configs, Question(url=url, **options))


def test_the_command(configs, capsys):
    assert main(["explain", "--configs", str(configs), "http://shop.localhost:8080/api/x",
                 "--header", "X-Env: beta"]) == 0
    text = capsys.readouterr().out
    assert "app api: chosen" in text and "-> server 127.0.0.1:9002" in text and "X-App: api" in text
    assert main(["explain", "--configs", str(configs), "--json", "https://vault.localhost/"]) == 0
    assert json.loads(capsys.readouterr().out)["terminator"]["client_certificate"] == "required"
    assert main(["explain", "--configs", str(configs), "--header", "nocolon", "http://x/"]) == 1

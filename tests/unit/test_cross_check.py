"""`frontgate check` across the stages: each case is a set of real config files that each load on
their own, and what the cross-stage check says about them (warnings pass, errors block)."""
from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from frontgate_ops.cli import main
from tests.certmaker import DAY, make_leaf

ROUTER = """
[router]
state_file = "state/health.json"
trusted_sources = ["127.0.0.1/32"]
[listen.public]
address = "127.0.0.1:8080"
[listen.tls]
address = "127.0.0.1:8443"
proxy_protocol = true
scheme = "https"
[[app]]
name = "maps"
hosts = ["maps.localhost", "*.maps.localhost"]
servers = ["127.0.0.1:3000"]
"""

TERMINATOR = """
[terminator]
listen = "127.0.0.1:9443"
forward_to = "127.0.0.1:8443"
router_config = "mux-router.toml"
[[certificate]]
cert = "site.pem"
"""

CHECKER = """
[checker]
router_config = "mux-router.toml"
"""

# (name, {file: (old, new)} edits to the good configs, extra files, expected exit, expected lines)
CASES = [
    ("all agree", {}, {}, 0, []),
    ("a host no certificate covers", {"mux-router.toml": ('"*.maps.localhost"', '"*.maps.localhost", "tiles.localhost"')},
     {}, 0, ["warning: ", "app maps: host tiles.localhost is covered by no certificate"]),
    ("a certificate about to expire", {}, {"expiring": True}, 0, ["warning: ", "site.pem): expires on"]),
    ("forward_to is no listener", {"tls-terminator.toml": ('"127.0.0.1:8443"', '"127.0.0.1:8444"')}, {}, 2,
     ["error: ", "terminator.forward_to: 127.0.0.1:8444 is no listener of mux-router.toml"]),
    ("the listener does not expect PROXY", {"mux-router.toml": ('proxy_protocol = true\n', '')}, {}, 2,
     ["listener tls of mux-router.toml does not expect the PROXY header"]),
    ("trusted_sources miss the terminator", {"mux-router.toml": ('"127.0.0.1/32"', '"10.0.0.0/8"')}, {}, 2,
     ["router.trusted_sources: does not cover 127.0.0.1"]),
    ("the checker follows another router file", {"health-checker.toml": ('"mux-router.toml"', '"other.toml"')},
     {"other": True}, 2, ["checker.router_config: names", "other.toml, not"]),
    ("client_ca apps the terminator does not follow",
     {"mux-router.toml": ('servers = ["127.0.0.1:3000"]', 'servers = ["127.0.0.1:3000"]\nclient_ca = "ca.pem"'),
      "tls-terminator.toml": ('router_config = "mux-router.toml"\n', '')}, {}, 2,
     ["terminator.router_config: must name mux-router.toml"]),
]


@pytest.mark.parametrize("name,edits,extra,code,expected", CASES, ids=[c[0] for c in CASES])
def test_cross_stage_check(tmp_path: Path, capsys, name, edits, extra, code, expected):
    ca = trustme.CA()
    leaf = make_leaf(ca, "maps.localhost", "*.maps.localhost", valid_to=(5 if extra.get("expiring") else 90) * DAY)
    leaf.write_pem(tmp_path / "site.pem")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    files = {"mux-router.toml": ROUTER, "tls-terminator.toml": TERMINATOR, "health-checker.toml": CHECKER}
    if extra.get("other"):
        files["other.toml"] = ROUTER.replace("state/health.json", "elsewhere/health.json")
    for file, text in files.items():
        old, new = edits.get(file, ("", ""))
        assert old in text
        (tmp_path / file).write_text(text.replace(old, new, 1) if old else text)
    assert main(["check", "--configs", str(tmp_path)]) == code
    err = capsys.readouterr().err
    for line in expected:
        assert line in err, err
    if not expected:
        assert err == ""

"""`frontgate certs` and `frontgate status` with a cert-manager.toml: each name's expiry, next
attempt and last error, from cert-manager's state files; `frontgate check` validates the file."""
import json
import time

import trustme

from frontgate import acme_state
from frontgate_ops import acme_report
from frontgate_ops.cli import main
from frontgate_ops.status import format_status

TERMINATOR = """
[terminator]
listen = "127.0.0.1:8443"
forward_to = "127.0.0.1:9000"
certs_dir = "certs"
"""
MANAGER = """
[cert_manager]
names = ["shop.example.com", "new.example.com"]
certs_dir = "certs"
state_dir = "state"
"""


def setup(tmp_path):
    (tmp_path / "certs").mkdir()
    pem = tmp_path / "certs" / "shop.example.com.pem"
    trustme.CA().issue_cert("shop.example.com").private_key_and_cert_chain_pem.write_to_path(str(pem))
    pem.chmod(0o600)
    (tmp_path / "tls-terminator.toml").write_text(TERMINATOR)
    (tmp_path / "cert-manager.toml").write_text(MANAGER)
    now = time.time()
    state = acme_state.NameState(name="shop.example.com", next_attempt=now + 3 * 86400)
    state.failed("urn:ietf:params:acme:error:rateLimited: too many certificates", now - 60, now + 3600)
    acme_state.save(tmp_path / "state", state)


def test_certs_shows_next_renewal_and_last_error(tmp_path, capsys):
    setup(tmp_path)
    assert main(["certs", "--configs", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "automatic certificates (cert-manager" in text
    assert "shop.example.com: expires -, next " in text and "(in 2d23h)" in text and "1 failure(s) in a row" in text
    assert "last error" in text and "rateLimited: too many certificates" in text
    assert "new.example.com: expires -, next -" in text

    assert main(["certs", "--json", "--configs", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    shop = next(r for r in rows if r["file"].endswith("shop.example.com.pem"))
    assert shop["source"] == "certs_dir" and shop["acme"]["failures"] == 1 and "rateLimited" in shop["acme"]["last_error"]
    new = next(r for r in rows if r["file"].endswith("new.example.com.pem"))
    assert new["source"] == "cert-manager" and new["status"] == "not issued yet"


def test_status_has_the_section(tmp_path):
    setup(tmp_path)
    facts = {"time": time.time(), "supervisord": {"error": "not running"}, "processes": [],
             "health": {"error": "none"}, "certificates": [], "acme": acme_report.facts(tmp_path)}
    text = format_status(facts)
    assert "automatic certificates (cert-manager" in text and "rateLimited" in text


def test_check_validates_cert_manager_toml(tmp_path, capsys):
    from frontgate_ops.cli import check_configs
    (tmp_path / "cert-manager.toml").write_text('[cert_manager]\nnames = ["*.example.com"]\n')
    errors = check_configs(tmp_path)
    assert any("cert-manager.toml: cert_manager.names[0]" in e and "wildcard" in e for e in errors), errors

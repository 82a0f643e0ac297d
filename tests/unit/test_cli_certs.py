"""`frontgate certs`: what the terminator's config loads, listed for an operator."""
import json

import trustme

from frontgate_ops.cli import main

TERMINATOR = """
[terminator]
listen = "127.0.0.1:8443"
forward_to = "127.0.0.1:9000"
certs_dir = "certs"
[[certificate]]
cert = "site.pem"
"""


def test_certs_lists_entries_and_certs_dir(tmp_path, capsys):
    ca = trustme.CA()
    ca.issue_cert("maps.localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    (tmp_path / "certs").mkdir()
    ca.issue_cert("*.wild.localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "certs" / "w.pem"))
    for p in (tmp_path / "site.pem", tmp_path / "certs" / "w.pem"):
        p.chmod(0o600)
    (tmp_path / "tls-terminator.toml").write_text(TERMINATOR)

    assert main(["certs", "--configs", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "site.pem  [certificate[0]] (default)" in text and "names:   maps.localhost" in text
    assert "w.pem  [certs_dir]" in text and "*.wild.localhost" in text and "days left, valid" in text

    assert main(["certs", "--json", "--configs", str(tmp_path)]) == 0
    rows = {r["file"].rsplit("/", 1)[1]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["site.pem"]["names"] == ["maps.localhost"] and rows["site.pem"]["default"]
    assert rows["w.pem"]["source"] == "certs_dir" and rows["w.pem"]["days_left"] > 0


def test_certs_reports_a_broken_file_and_exits_1(tmp_path, capsys):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    ca = trustme.CA()
    ca.issue_cert("maps.localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    (tmp_path / "site.pem").chmod(0o600)
    (tmp_path / "tls-terminator.toml").write_text(TERMINATOR)
    assert main(["certs", "--configs", str(tmp_path)]) == 1
    assert "broken.pem" in capsys.readouterr().out


def test_certs_with_a_broken_config(tmp_path, capsys):
    (tmp_path / "tls-terminator.toml").write_text("[terminator\n")
    assert main(["certs", "--configs", str(tmp_path)]) == 1
    assert "ERROR: " in capsys.readouterr().out

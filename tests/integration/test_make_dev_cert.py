"""scripts/make_dev_cert.py: a development CA (once) and, from it, the development certificate when it is
missing or due; a certificate that a TLS server can really use and a client trusting the CA accepts."""
from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from frontgate.config import load_terminator_config
from tests.helpers import BIN, REPO

SCRIPT = REPO / "scripts" / "make_dev_cert.py"


def make(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "python"), str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def configs(tmp_path):
    """The shipped configs, copied: the certificate goes to tmp_path/certs/dev.pem."""
    d = tmp_path / "configs"
    d.mkdir()
    for name in ("tls-terminator.toml", "mux-router.toml"):
        shutil.copy(REPO / "configs" / name, d / name)
    return d


def load(pem_path):
    data = pem_path.read_bytes()
    return x509.load_pem_x509_certificate(data), serialization.load_pem_private_key(data, password=None)


def san(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def ca_of(tmp_path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((tmp_path / "certs" / "dev-ca" / "ca.pem").read_bytes())


def test_makes_a_ca_and_a_p256_certificate_from_it_for_localhost_and_every_app_host(configs, tmp_path):
    r = make(configs / "tls-terminator.toml")
    assert r.returncode == 0, r.stderr
    pem, ca_dir = tmp_path / "certs" / "dev.pem", tmp_path / "certs" / "dev-ca"
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"made the development CA {ca_dir / 'ca.pem'}") and len(lines) == 2
    assert lines[1].startswith(f"made {pem}: ECDSA P-256 key and certificate from the development CA")
    assert "valid 365 days" in lines[1]
    assert pem.stat().st_mode & 0o777 == 0o600
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    cert, key = load(pem)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    ca = ca_of(tmp_path)
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject != cert.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert san(cert) == ["localhost", "*.localhost", "maps.localhost", "coltrane.localhost", "*.coltrane.localhost"]
    # Mozilla "intermediate": at most 366 days, as sslyze counts them (whole days of the lifespan).
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 365
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The served file holds the key and the leaf only: never the CA's key.
    assert pem.read_bytes().count(b"PRIVATE KEY-----") == 2 and len(x509.load_pem_x509_certificates(pem.read_bytes())) == 1


def test_second_run_prints_nothing_and_touches_nothing(configs, tmp_path):
    assert make(configs / "tls-terminator.toml").returncode == 0
    files = [tmp_path / "certs" / "dev.pem", tmp_path / "certs" / "dev-ca" / "ca.pem", tmp_path / "certs" / "dev-ca" / "ca.key"]
    before = [p.read_bytes() for p in files]
    r = make(configs / "tls-terminator.toml")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert [p.read_bytes() for p in files] == before


def issue_from_the_ca(tmp_path, names: list[str], days_ago: int) -> bytes:
    """A development certificate from the CA in tmp_path/certs/dev-ca, issued `days_ago`."""
    from frontgate import dev_ca
    ca = dev_ca.load(tmp_path / "certs" / "dev-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_ago)
    return dev_ca.key_pem(key) + ca.issue(key.public_key(), names, now=now).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("days_ago, names, renewed", [
    (300, None, False),          # 65 days left: kept
    (340, None, True),           # 25 days left: renewed
    (0, ["localhost", "*.localhost", "maps.localhost"], True),      # coltrane's hosts are missing
    (0, ["localhost", "*.localhost", "*.coltrane.localhost", "coltrane.localhost", "x.localhost"], False),
])
def test_renews_the_development_certificate_when_due(configs, tmp_path, days_ago, names, renewed):
    assert make(configs / "tls-terminator.toml").returncode == 0
    pem = tmp_path / "certs" / "dev.pem"
    pem.write_bytes(issue_from_the_ca(tmp_path, names or san(load(pem)[0]), days_ago))
    before, ca_before = pem.read_bytes(), ca_of(tmp_path)
    r = make(configs / "tls-terminator.toml")
    assert r.returncode == 0, r.stderr
    assert (pem.read_bytes() != before) == renewed, r.stdout
    assert ca_of(tmp_path) == ca_before          # the CA is made once
    if renewed:
        assert "(renewed: the old one was " in r.stdout
        cert = load(pem)[0]
        cert.verify_directly_issued_by(ca_before)
        assert cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=364)
        assert "coltrane.localhost" in san(cert)


def test_an_operators_certificate_is_never_touched_even_near_its_expiry(configs, tmp_path):
    import trustme
    pem = tmp_path / "certs" / "dev.pem"
    pem.parent.mkdir()
    leaf = trustme.CA().issue_cert("maps.localhost", not_after=datetime.datetime.now(datetime.timezone.utc)
                                   + datetime.timedelta(days=3))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    before = pem.read_bytes()
    r = make(configs / "tls-terminator.toml")
    assert (r.returncode, r.stdout) == (0, "")
    assert pem.read_bytes() == before and not (tmp_path / "certs" / "dev-ca").exists()


def test_a_self_signed_certificate_of_an_older_frontgate_and_one_from_a_lost_ca_are_replaced(configs, tmp_path):
    from frontgate import dev_ca
    pem = tmp_path / "certs" / "dev.pem"
    pem.parent.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "frontgate development")])
    now = datetime.datetime.now(datetime.timezone.utc)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=825))
           .sign(key, hashes.SHA256()))
    dev_ca.write_private(pem, dev_ca.key_pem(key) + old.public_bytes(serialization.Encoding.PEM))
    r = make(configs / "tls-terminator.toml")
    assert r.returncode == 0 and "renewed: the old one was self-signed by an older frontgate" in r.stdout, r.stdout
    load(pem)[0].verify_directly_issued_by(ca_of(tmp_path))

    shutil.rmtree(tmp_path / "certs" / "dev-ca")       # a new CA: what the old one issued is issued again
    r = make(configs / "tls-terminator.toml")
    assert "made the development CA" in r.stdout and "issued by another development CA" in r.stdout, r.stdout
    load(pem)[0].verify_directly_issued_by(ca_of(tmp_path))


def test_the_terminator_config_accepts_it_and_pyopenssl_loads_it(configs, tmp_path):
    make(configs / "tls-terminator.toml")
    entry = load_terminator_config(configs / "tls-terminator.toml").default_certificate   # require_files=True
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(str(entry.cert))
    ctx.use_privatekey_file(str(entry.cert))
    ctx.check_privatekey()


@pytest.mark.parametrize("server_name", ["maps.localhost", "x.coltrane.localhost", "localhost"])
def test_a_tls_handshake_verifies_against_it(configs, tmp_path, server_name):
    make(configs / "tls-terminator.toml")
    pem = str(tmp_path / "certs" / "dev.pem")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pem)
    # What a client that trusts the development CA (README) sees: the chain verifies, and the name.
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "certs" / "dev-ca" / "ca.pem"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        errors = []

        def serve():
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello over TLS")
            except Exception as e:      # reported by the assertion below
                errors.append(e)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                assert tls.recv(100) == b"hello over TLS"
        t.join(10)
        assert not errors


def test_separate_key_file_and_an_existing_key_is_kept(tmp_path):
    (tmp_path / "tls-terminator.toml").write_text("""
[terminator]
listen = "127.0.0.1:1443"
forward_to = "127.0.0.1:18443"
[[certificate]]
cert = "a/cert.pem"
key = "a/key.pem"
[[certificate]]
cert = "b/cert.pem"
key = "b/key.pem"
""")
    (tmp_path / "b").mkdir()
    existing = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "b" / "key.pem").write_bytes(existing.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # No mux-router.toml next to it: just the localhost names.
    r = make(tmp_path / "tls-terminator.toml", "--ca-dir", tmp_path / "ca")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 4                    # the CA, a/key.pem, a/cert.pem, b/cert.pem
    assert (tmp_path / "a" / "key.pem").stat().st_mode & 0o777 == 0o600
    a_cert = x509.load_pem_x509_certificate((tmp_path / "a" / "cert.pem").read_bytes())
    a_key = serialization.load_pem_private_key((tmp_path / "a" / "key.pem").read_bytes(), password=None)
    assert a_cert.public_key().public_numbers() == a_key.public_key().public_numbers()
    b_cert = x509.load_pem_x509_certificate((tmp_path / "b" / "cert.pem").read_bytes())
    assert b_cert.public_key().public_numbers() == existing.public_key().public_numbers()
    assert san(a_cert) == ["localhost", "*.localhost"]


def test_a_config_error_is_reported_with_exit_status_2(tmp_path):
    (tmp_path / "tls-terminator.toml").write_text("[terminator]\nlisten = 443\n")
    r = make(tmp_path / "tls-terminator.toml")
    assert r.returncode == 2 and "terminator.listen: expected a string" in r.stderr

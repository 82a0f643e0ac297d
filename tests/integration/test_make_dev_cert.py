"""scripts/make_dev_cert.py: makes what is missing, a certificate that a TLS server can really use."""
from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
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


def test_makes_a_self_signed_p256_certificate_for_localhost_and_every_app_host(configs, tmp_path):
    r = make(configs / "tls-terminator.toml")
    assert r.returncode == 0, r.stderr
    pem = tmp_path / "certs" / "dev.pem"
    assert r.stdout.startswith(f"made {pem}: self-signed ECDSA P-256 certificate and key, valid 825 days")
    assert pem.stat().st_mode & 0o777 == 0o600
    cert, key = load(pem)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.issuer == cert.subject
    assert san(cert) == ["localhost", "*.localhost", "maps.localhost", "coltrane.localhost", "*.coltrane.localhost"]
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=824) < lifetime <= datetime.timedelta(days=825)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_second_run_prints_nothing_and_touches_nothing(configs, tmp_path):
    assert make(configs / "tls-terminator.toml").returncode == 0
    pem = tmp_path / "certs" / "dev.pem"
    before = pem.read_bytes()
    r = make(configs / "tls-terminator.toml")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert pem.read_bytes() == before


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
    client_ctx = ssl.create_default_context(cafile=pem)
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
    r = make(tmp_path / "tls-terminator.toml")        # no mux-router.toml next to it: just the localhost names
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 3                    # a/key.pem, a/cert.pem, b/cert.pem
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

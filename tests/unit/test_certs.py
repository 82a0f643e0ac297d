"""Certificate loading, its error messages, and the CertStore's SNI choice (in-memory handshakes)."""
from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from frontgate.config import Address, CertificateEntry, ConfigError, TerminatorConfig
from tls_terminator.certs import CertStore, _select_alpn, check_certificates, load_certificate


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_leaf(ca, d: Path, name: str, *identities: str, key_file: bool = False, **kw) -> CertificateEntry:
    leaf = ca.issue_cert(*identities, **kw)
    cert = d / f"{name}.pem"
    if key_file:
        cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        (d / f"{name}.key").write_bytes(leaf.private_key_pem.bytes())
        (d / f"{name}.key").chmod(0o600)
        return CertificateEntry(cert=cert, key=d / f"{name}.key")
    cert.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
    cert.chmod(0o600)
    return CertificateEntry(cert=cert)


def write_custom_leaf(ca, d: Path, name: str, dns_names: list[str]) -> CertificateEntry:
    """A leaf with SAN names trustme refuses to write (it validates them; we want odd ones)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    path = d / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    return CertificateEntry(cert=path)


def config(tmp_path: Path, *entries: CertificateEntry) -> TerminatorConfig:
    return TerminatorConfig(path=tmp_path / "tls-terminator.toml", listen=Address.parse("127.0.0.1:1"),
                            forward_to=Address.parse("127.0.0.1:2"), workers=1, handshake_timeout=10,
                            idle_timeout=60, max_connections=10, certificates=tuple(entries))


def problem(tmp_path, entry: CertificateEntry, position: int = 0) -> str:
    with pytest.raises(ConfigError) as e:
        load_certificate(tmp_path / "tls-terminator.toml", position, entry)
    return str(e.value)


def test_names_come_from_subject_alt_name(ca, tmp_path):
    entry = write_leaf(ca, tmp_path, "site", "a.test", "*.b.test", "127.0.0.1", common_name="ignored.test")
    loaded = load_certificate(tmp_path / "t.toml", 0, entry)
    assert loaded.names == ("a.test", "*.b.test")      # IP SANs are not names; the CN is ignored


def test_cn_is_used_only_without_san_dns_names(ca, tmp_path):
    # trustme always writes a SAN; an IP-only SAN has no DNS names, so the CN counts.
    entry = write_leaf(ca, tmp_path, "ip", "127.0.0.1", common_name="cn.test")
    assert load_certificate(tmp_path / "t.toml", 0, entry).names == ("cn.test",)


def test_key_in_its_own_file(ca, tmp_path):
    entry = write_leaf(ca, tmp_path, "site", "a.test", key_file=True)
    assert load_certificate(tmp_path / "t.toml", 0, entry).names == ("a.test",)


def test_errors_name_the_toml_key_and_the_file(ca, tmp_path):
    toml = tmp_path / "tls-terminator.toml"
    good = write_leaf(ca, tmp_path, "good", "good.test", key_file=True)
    other = write_leaf(ca, tmp_path, "other", "other.test", key_file=True)

    (tmp_path / "garbage.pem").write_text("hello\n")
    assert problem(tmp_path, CertificateEntry(cert=tmp_path / "garbage.pem"), 3) == (
        f"{toml}: certificate[3].cert: {tmp_path / 'garbage.pem'}: no PEM certificate in it")

    assert problem(tmp_path, CertificateEntry(cert=tmp_path / "missing.pem")).endswith("missing.pem: file not found")
    assert problem(tmp_path, CertificateEntry(cert=tmp_path)).endswith(": is a directory")

    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert "cannot parse the PEM certificate" in problem(tmp_path, CertificateEntry(cert=broken))

    # Certificate without its key, and no `key`.
    assert problem(tmp_path, CertificateEntry(cert=good.cert)).endswith(
        "good.pem: no private key in it (add it to this file or set `key`)")
    # The key of another certificate.
    msg = problem(tmp_path, CertificateEntry(cert=good.cert, key=other.key), 1)
    assert msg.startswith(f"{toml}: certificate[1].key: {other.key}: the private key does not match"), msg
    # An encrypted key.
    key = serialization.load_pem_private_key(good.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    assert "is encrypted" in problem(tmp_path, CertificateEntry(cert=good.cert, key=encrypted))


def test_check_certificates_lists_every_problem(ca, tmp_path):
    good = write_leaf(ca, tmp_path, "good", "good.test")
    (tmp_path / "garbage.pem").write_text("x")
    cfg = config(tmp_path, good, CertificateEntry(cert=tmp_path / "garbage.pem"),
                 CertificateEntry(cert=tmp_path / "nothing.pem"))
    errors = check_certificates(cfg)
    assert [e.split(": ")[1] for e in errors] == ["certificate[1].cert", "certificate[2].cert"]
    assert all(e.startswith(f"{cfg.path}: ") for e in errors)
    assert check_certificates(config(tmp_path, good)) == []


def test_alpn_choice():
    assert _select_alpn(None, [b"h2", b"http/1.1"]) == b"http/1.1"
    assert _select_alpn(None, [b"h2"]) is SSL.NO_OVERLAPPING_PROTOCOLS


def test_warnings(ca, tmp_path):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    expired = write_leaf(ca, tmp_path, "old", "old.test", not_before=past - datetime.timedelta(days=1),
                         not_after=past)
    partial = write_custom_leaf(ca, tmp_path, "partial", ["ok.partial.test", "f*.partial.test"])
    partial.cert.chmod(0o644)
    store = CertStore.from_config(config(tmp_path, expired, partial))
    text = "\n".join(store.warnings())
    assert "certificate[0] (old.pem): expired on" in text
    assert "'f*.partial.test' can never match" in text
    assert "partial.pem is readable by group or others" in text


# --------------------------------------------------------------------------- in-memory handshakes

def handshake(store: CertStore, ca, server_name: str | None, alpn: list[str] | None = None):
    """Client (stdlib ssl) and server (the store's contexts) talking through memory only."""
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.check_hostname = False
    if alpn:
        client_ctx.set_alpn_protocols(alpn)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = SSL.Connection(store.initial_context, None)
    server.set_accept_state()
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        server.bio_write(c_out.read())
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            c_in.write(server.bio_read(65536))
        except SSL.WantReadError:
            pass
    der = client.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der), client, server


def test_store_picks_the_certificate_by_sni(ca, tmp_path):
    entries = [write_leaf(ca, tmp_path, "app", "app.test", common_name="app"),
               write_leaf(ca, tmp_path, "wild", "*.wild.test", common_name="wild", key_file=True),
               write_leaf(ca, tmp_path, "fallback", "fallback.test", common_name="fallback")]
    entries[2] = CertificateEntry(cert=entries[2].cert, default=True)
    store = CertStore.from_config(config(tmp_path, *entries))
    assert store.default.entry.cert.name == "fallback.pem"
    assert store.certificate_for("x.wild.test").entry.cert.name == "wild.pem"

    def cn(name):
        cert, _, _ = handshake(store, ca, name)
        return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert [cn(n) for n in ("app.test", "x.wild.test", "a.b.wild.test", "nope.test", None)] == [
        "app", "wild", "fallback", "fallback", "fallback"]

    _, client, server = handshake(store, ca, "app.test", alpn=["h2", "http/1.1"])
    assert client.selected_alpn_protocol() == "http/1.1" and server.get_alpn_proto_negotiated() == b"http/1.1"
    assert server.get_servername() == b"app.test" and server.get_protocol_version_name() == "TLSv1.3"
    _, client, server = handshake(store, ca, "app.test", alpn=["h2"])
    assert client.selected_alpn_protocol() is None and server.get_alpn_proto_negotiated() == b""

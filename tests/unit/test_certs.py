"""Certificate loading, its error messages, the certs_dir, the choice between rival certificates,
reloads, and the CertStore's SNI choice (in-memory handshakes)."""
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
from tests.certmaker import DAY, make_leaf
from tls_terminator.cert_report import check_certificates, describe_certificates, format_certificates
from tls_terminator.certificate_files import files_fingerprint, load_certificate, scan_certs_dir
from tls_terminator.certs import CertStore, choose
from tls_terminator.tls import Front, alpn_selector


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


def config(tmp_path: Path, *entries: CertificateEntry, **kw) -> TerminatorConfig:
    return TerminatorConfig(path=tmp_path / "tls-terminator.toml", listen=Address.parse("127.0.0.1:1"),
                            forward_to=Address.parse("127.0.0.1:2"), workers=1, handshake_timeout=10,
                            idle_timeout=60, max_connections=10, certificates=tuple(entries), **kw)


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


@pytest.mark.parametrize("ours, offered, chosen", [
    (("h2", "http/1.1"), [b"h2", b"http/1.1"], b"h2"),
    (("h2", "http/1.1"), [b"http/1.1", b"h2"], b"h2"),          # our preference wins
    (("h2", "http/1.1"), [b"http/1.1"], b"http/1.1"),
    (("http/1.1",), [b"h2", b"http/1.1"], b"http/1.1"),
    (("http/1.1",), [b"h2"], SSL.NO_OVERLAPPING_PROTOCOLS),      # no ALPN rather than a failed handshake
    (("h2", "http/1.1"), [b"spdy/3"], SSL.NO_OVERLAPPING_PROTOCOLS),
])
def test_alpn_choice(ours, offered, chosen):
    assert alpn_selector(ours)(None, offered) == chosen


def test_warnings(ca, tmp_path):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    expired = write_leaf(ca, tmp_path, "old", "old.test", not_before=past - datetime.timedelta(days=1),
                         not_after=past)
    partial = write_custom_leaf(ca, tmp_path, "partial", ["ok.partial.test", "f*.partial.test"])
    partial.cert.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        CertStore.from_config(config(tmp_path, expired, partial))
    store = CertStore.from_config(config(tmp_path, expired, partial, allow_loose_key_permissions=True))
    text = "\n".join(store.warnings())
    assert "certificate[0] (old.pem): expired on" in text
    assert "'f*.partial.test' can never match" in text
    assert "partial.pem: the private key file is readable by group or others (mode 0644)" in text


# --------------------------------------------------------------------------- in-memory handshakes

def handshake(store: CertStore, ca, server_name: str | None, alpn: list[str] | None = None,
              ciphers: str | None = None, **client_options):
    """Client (stdlib ssl) and server (the store's contexts) talking through memory only."""
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.check_hostname = False
    for k, v in client_options.items():
        setattr(client_ctx, k, v)
    if ciphers:
        client_ctx.set_ciphers(ciphers)
    if alpn:
        client_ctx.set_alpn_protocols(alpn)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = SSL.Connection(Front(store.cfg.tls, store.on_server_name).context, None)
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

    _, client, server = handshake(store, ca, "app.test", alpn=["http/1.1"])
    assert client.selected_alpn_protocol() == "http/1.1" and server.get_alpn_proto_negotiated() == b"http/1.1"
    assert server.get_servername() == b"app.test" and server.get_protocol_version_name() == "TLSv1.3"
    _, client, server = handshake(store, ca, "app.test", alpn=["h2"])
    assert client.selected_alpn_protocol() == "h2" and server.get_alpn_proto_negotiated() == b"h2"
    _, client, server = handshake(store, ca, "app.test", alpn=["spdy/3"])
    assert client.selected_alpn_protocol() is None and server.get_alpn_proto_negotiated() == b""


# --------------------------------------------------------------------------- certs_dir, choice, reporting

def test_scan_certs_dir_pairs_and_ignores(tmp_path):
    for name in ("a.pem", "b.crt", "b.key", "c.pem", "c.key", "d.crt", ".hidden.pem", "notes.txt", "x.ocsp"):
        (tmp_path / name).write_text("x")
    entries = scan_certs_dir(tmp_path)
    assert [(e.cert.name, e.key.name if e.key else None) for e in entries] == [
        ("a.pem", None), ("b.crt", "b.key"), ("c.pem", "c.key"), ("d.crt", None)]


def test_an_unlistable_certs_dir_keeps_what_was_loaded_from_it(ca, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    make_leaf(ca, "k.test").write_pem(d / "k.pem")
    cfg = config(tmp_path, certs_dir=d)
    first = CertStore.load(cfg)
    d.rename(tmp_path / "elsewhere")
    again = CertStore.load(cfg, previous=first, strict=False)
    assert again.certificates == first.certificates
    assert "cannot list it" in again.problems[0] and "keeping the 1 certificates" in again.problems[0]


def test_choose_prefers_valid_now_then_latest_expiry_per_key_type(ca, tmp_path):
    def loaded(label, **kw):
        leaf = make_leaf(ca, "n.test", **kw)
        return load_certificate(tmp_path / "t.toml", None, CertificateEntry(cert=leaf.write_pem(tmp_path / f"{label}.pem")))
    soon, later = loaded("soon", valid_to=10 * DAY), loaded("later", valid_to=50 * DAY)
    future = loaded("future", valid_from=DAY, valid_to=99 * DAY)
    expired = loaded("expired", valid_from=-9 * DAY, valid_to=-DAY)
    rsa_cert = loaded("rsa", key_type="rsa")
    now = datetime.datetime.now(datetime.timezone.utc)
    assert choose([soon, later, future, expired], now) == (later,)
    assert choose([future, expired], now) == (future,)            # nothing valid: the latest expiry
    assert choose([rsa_cert, soon, later], now) == (later, rsa_cert)   # one per key type, ECDSA first
    assert [c.key_type for c in (later, rsa_cert)] == ["ECDSA", "RSA"]


def test_certs_dir_store_serves_ecdsa_and_rsa_by_what_the_client_offers(ca, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    ec_leaf, rsa_leaf = make_leaf(ca, "both.test"), make_leaf(ca, "both.test", key_type="rsa")
    ec_leaf.write_pem(d / "both-ec.pem")
    rsa_leaf.write_pair(d / "both-rsa.crt", d / "both-rsa.key")
    (d / "broken.pem").write_text("nope")
    cfg = config(tmp_path, certs_dir=d)
    store = CertStore.load(cfg)
    assert len(store.certificates) == 2 and "broken.pem" in store.problems[0]

    def served(ciphers):
        cert, _, _ = handshake(store, ca, "both.test", ciphers=ciphers, maximum_version=ssl.TLSVersion.TLSv1_2)
        return cert.public_bytes(serialization.Encoding.DER)
    assert served("ECDHE-ECDSA-AES128-GCM-SHA256") == ec_leaf.der
    assert served("ECDHE-RSA-AES128-GCM-SHA256") == rsa_leaf.der


def test_loose_key_in_certs_dir_stops_the_start_but_not_a_reload(ca, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    make_leaf(ca, "ok.test").write_pem(d / "ok.pem")
    make_leaf(ca, "loose.test").write_pem(d / "loose.pem").chmod(0o640)
    cfg = config(tmp_path, certs_dir=d)
    with pytest.raises(ConfigError, match="loose.pem: the private key file is readable by group"):
        CertStore.load(cfg)
    store = CertStore.load(cfg, strict=False)
    assert [c.entry.cert.name for c in store.certificates] == ["ok.pem"]
    assert "loose.pem" in store.problems[0] and store.problems[0].endswith("; skipped")


def test_reload_keeps_the_previous_version_of_a_broken_file(ca, tmp_path):
    entry = write_leaf(ca, tmp_path, "site", "site.test")
    cfg = config(tmp_path, entry)
    first = CertStore.load(cfg)
    entry.cert.write_text("half-written")
    with pytest.raises(ConfigError):
        CertStore.load(cfg)                       # at start: refused
    again = CertStore.load(cfg, previous=first, strict=False)
    assert again.certificates == first.certificates
    assert again.problems[0].endswith("keeping the previously loaded version")
    with pytest.raises(ConfigError, match="no usable certificate"):
        CertStore.load(cfg, strict=False)         # nothing to fall back on


def test_fingerprint_changes_with_the_files(ca, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    cfg = config(tmp_path, certs_dir=d)
    before = files_fingerprint(cfg)
    make_leaf(ca, "n.test").write_pem(d / "n.pem")
    assert files_fingerprint(cfg) != before
    assert files_fingerprint(cfg) == files_fingerprint(cfg)


def test_describe_certificates(ca, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    leaf = make_leaf(ca, "d.test", "*.d.test", key_type="rsa", valid_to=10 * DAY)
    leaf.write_pem(d / "d.pem")
    (d / "d.ocsp").write_bytes(leaf.ocsp_response())
    (d / "bad.pem").write_text("nope")
    explicit = write_leaf(ca, tmp_path, "first", "first.test")
    rows = describe_certificates(config(tmp_path, explicit, certs_dir=d))
    first, from_dir, bad = rows
    assert first["default"] and first["source"] == "certificate[0]" and first["names"] == ["first.test"]
    assert from_dir["source"] == "certs_dir" and from_dir["names"] == ["d.test", "*.d.test"]
    assert from_dir["key_type"] == "RSA 2048" and from_dir["days_left"] in (9, 10)
    assert from_dir["status"] == "valid" and from_dir["ocsp"] == str(d / "d.ocsp")
    assert from_dir["issuer"] == leaf.cert.issuer.rfc4514_string() and from_dir["file"] == str(d / "d.pem")
    assert bad == {"file": str(d / "bad.pem"), "source": "terminator.certs_dir", "error": "no PEM certificate in it"}
    text = format_certificates(rows)
    assert "d.test, *.d.test" in text and "ERROR: no PEM certificate in it" in text and "(default)" in text


def test_ocsp_file_problems_are_warnings(ca, tmp_path):
    leaf = make_leaf(ca, "o.test")
    other = make_leaf(ca, "other.test")
    leaf.write_pem(tmp_path / "o.pem")
    (tmp_path / "o.ocsp").write_bytes(other.ocsp_response())
    loaded = load_certificate(tmp_path / "t.toml", 0, CertificateEntry(cert=tmp_path / "o.pem"))
    assert loaded.ocsp_response is None and "not this certificate's" in loaded.notes[0]
    (tmp_path / "o.ocsp").write_bytes(b"junk")
    loaded = load_certificate(tmp_path / "t.toml", 0, CertificateEntry(cert=tmp_path / "o.pem"))
    assert loaded.ocsp_response is None and "cannot read it" in loaded.notes[0]
    (tmp_path / "o.ocsp").write_bytes(leaf.ocsp_response())
    assert load_certificate(tmp_path / "t.toml", 0, CertificateEntry(cert=tmp_path / "o.pem")).ocsp_response


def test_check_certificates_reports_bad_ciphers(ca, tmp_path):
    from frontgate.config import TlsPolicy
    good = write_leaf(ca, tmp_path, "good", "good.test")
    errors = check_certificates(config(tmp_path, good, tls=TlsPolicy(ciphers="NOPE-NOTHING")))
    assert len(errors) == 1 and "tls.ciphers: OpenSSL accepts no cipher in 'NOPE-NOTHING'" in errors[0]


def test_check_certificates_reports_unknown_groups(ca, tmp_path):
    from frontgate.config import TlsPolicy
    good = write_leaf(ca, tmp_path, "good", "good.test")
    errors = check_certificates(config(tmp_path, good, tls=TlsPolicy(groups=("X25519", "curve9000", "P-256"))))
    assert errors == [f"{tmp_path / 'tls-terminator.toml'}: tls.groups: OpenSSL does not know 'curve9000' as a key "
                      "exchange group (names such as 'X25519', 'prime256v1', 'secp384r1', 'X448', 'secp521r1', "
                      "'ffdhe2048')"]
    assert check_certificates(config(tmp_path, good, tls=TlsPolicy(groups=("X448", "P-256")))) == []


def test_a_ca_certificate_and_its_key_are_never_served(tmp_path):
    """The development CA in a certs_dir (someone pointed it at certs/dev-ca): refused, loudly."""
    from frontgate import dev_ca
    made = dev_ca.create(tmp_path / "dev-ca")
    cfg = config(tmp_path, certs_dir=made.directory)
    errors = check_certificates(cfg)
    assert len(errors) == 1 and "ca.pem: cannot be served: a CA certificate" in errors[0], errors
    # trustme's CA has digitalSignature in its keyUsage (for OCSP); a CA it is all the same.
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other.pem"), append=True)
    (tmp_path / "other.pem").chmod(0o600)
    assert "cannot be served" in problem(tmp_path, CertificateEntry(cert=tmp_path / "other.pem"))


def test_reload_reuses_what_did_not_change(ca, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    make_leaf(ca, "same.test").write_pem(d / "same.pem")
    make_leaf(ca, "renewed.test").write_pem(d / "renewed.pem")
    cfg = config(tmp_path, certs_dir=d)
    first = CertStore.load(cfg)
    renewed = make_leaf(ca, "renewed.test", valid_to=90 * DAY)
    renewed.write_pem(d / "renewed.pem")
    second = CertStore.load(cfg, previous=first, strict=False)
    assert second.certificate_for("same.test") is first.certificate_for("same.test")
    assert second.context_for("same.test") is first.context_for("same.test")
    assert second.certificate_for("renewed.test").leaf == renewed.cert
    assert second.context_for("renewed.test") is not first.context_for("renewed.test")
    (d / "same.pem").chmod(0o644)       # a mode change counts too: the key is now loose
    third = CertStore.load(cfg, previous=second, strict=False)
    assert "same.pem" in third.problems[0] and "readable by group" in third.problems[0]


def test_client_subject_is_printable_ascii():
    from tls_terminator.certs import printable
    assert printable("alice") == "alice"
    assert printable("evil\r\nX-Admin: 1") == "evil\\r\\nX-Admin: 1"
    assert printable("b\u00fcrger\x7f") == "b\\xfcrger\\x7f"

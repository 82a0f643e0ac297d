"""The development CA: a local certificate authority, as mkcert and Caddy's local CA have, that
issues the development certificate `make deploy` serves (scripts/make_dev_cert.py).

It lives in certs/dev-ca/ next to configs/: `ca.pem` (the CA certificate, public: what a system
store, a browser or `curl --cacert` is told to trust) and `ca.key` (its private key, mode 0600). It
is made once and kept; the key is never copied anywhere and the terminator never loads it: a
certs_dir does not descend into subdirectories, and a CA certificate (keyUsage without
digitalSignature) is refused as a serving certificate (tls_terminator.certificate_files).

The development leaf it issues is valid 365 days (Mozilla's "intermediate" profile allows at most
366) and is re-issued by `make deploy` when it is within RENEW_WITHIN_DAYS of expiry, when a host
of the router is not among its names, when another development CA issued it (the CA directory was
deleted: a new CA), or when it is a self-signed one made by an older frontgate. A certificate
frontgate did not make (an operator's own) is never touched.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from frontgate.names import certificate_patterns, matches

CA_CERT_NAME, CA_KEY_NAME = "ca.pem", "ca.key"
ORGANIZATION = "frontgate development"
CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 365
RENEW_WITHIN_DAYS = 30
CLOCK_SKEW = datetime.timedelta(hours=1)      # valid from a little before now: tolerate skewed clocks


def default_dir(configs: Path) -> Path:
    """certs/dev-ca beside the configs directory (configs/ -> certs/dev-ca)."""
    return configs.absolute().parent / "certs" / "dev-ca"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class DevCa:
    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT_NAME

    def issue(self, public_key, names: list[str], now: datetime.datetime | None = None) -> x509.Certificate:
        """A server certificate for `public_key` with `names` (DNS) as its subjectAltName, valid
        LEAF_VALID_DAYS from a little before `now`, and never beyond the CA itself."""
        start = (now or _now()) - CLOCK_SKEW
        end = min(start + datetime.timedelta(days=LEAF_VALID_DAYS), self.cert.not_valid_after_utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(self.cert.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(digital_signature=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                               critical=False)
                .sign(self.key, hashes.SHA256()))

    def issued(self, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def load(directory: Path) -> DevCa | None:
    """The CA in `directory`; None when it has not been made (or is incomplete)."""
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not the ECDSA key of a frontgate development CA")
    return DevCa(directory, cert, key)


def load_certificate(directory: Path) -> x509.Certificate | None:
    """Only the CA certificate (what `frontgate certs` shows; the key is not read)."""
    path = directory / CA_CERT_NAME
    return x509.load_pem_x509_certificate(path.read_bytes()) if path.is_file() else None


def describe(directory: Path, now: datetime.datetime | None = None) -> dict | None:
    """The CA as a `frontgate certs` row (the keys tls_terminator.cert_report.describe_certificates
    uses); None when there is no CA."""
    try:
        cert = load_certificate(directory)
    except (OSError, ValueError) as e:
        return {"file": str(directory / CA_CERT_NAME), "source": "development CA", "error": str(e)}
    if cert is None:
        return None
    now = now or _now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return {"file": str(directory / CA_CERT_NAME), "key_file": str(directory / CA_KEY_NAME),
            "source": "development CA, trusted by clients, never served", "names": [],
            "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "key_type": f"ECDSA {cert.public_key().curve.name}", "not_before": start.isoformat(), "not_after": end.isoformat(),
            "days_left": (end - now).days,
            "status": "expired" if end <= now else "not yet valid" if start > now else "valid",
            "ocsp": None, "default": False}


def create(directory: Path, now: datetime.datetime | None = None) -> DevCa:
    """A new CA (ECDSA P-256, valid CA_VALID_DAYS) written to `directory`: the key first, mode 0600."""
    start = (now or _now()) - CLOCK_SKEW
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"frontgate development CA ({socket.gethostname()})"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=CA_VALID_DAYS))
            # It issues server certificates only: no intermediate below it, and it cannot sign a TLS handshake.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    write_private(directory / CA_KEY_NAME, key_pem(key))
    write_file(directory / CA_CERT_NAME, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return DevCa(directory, cert, key)


def ending(ca: DevCa, now: datetime.datetime | None = None) -> bool:
    """Too close to its end to issue a leaf of full length: time for a new CA (trusted anew)."""
    return ca.cert.not_valid_after_utc - (now or _now()) < datetime.timedelta(days=LEAF_VALID_DAYS + RENEW_WITHIN_DAYS)


def covers(san_names: Iterable[str], host: str) -> bool:
    """Whether a certificate for `san_names` serves `host` (a name or a "*.suffix" pattern): the
    name itself, or a one-label wildcard over it (RFC 6125, by frontgate.names)."""
    patterns = certificate_patterns(san_names)[0]
    host = host.lower()
    return host in patterns or (not host.startswith("*") and any(matches(p, host) for p in patterns))


def from_frontgate(cert: x509.Certificate) -> bool:
    """Issued by a frontgate development CA (this one or an earlier one), or self-signed by an
    older frontgate that had no CA: an operator's own certificates never are."""
    return any(o.value == ORGANIZATION for o in cert.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def reissue_reason(cert: x509.Certificate, ca: DevCa | None, hosts: list[str],
                   now: datetime.datetime | None = None) -> str | None:
    """Why the development certificate `cert` should be issued anew; None to keep it, and always
    None for a certificate frontgate did not make (an operator's own)."""
    if not from_frontgate(cert):
        return None
    if cert.issuer == cert.subject:
        return "self-signed by an older frontgate"
    if ca is None or not ca.issued(cert):
        return "issued by another development CA"
    left = cert.not_valid_after_utc - (now or _now())
    if left < datetime.timedelta(days=RENEW_WITHIN_DAYS):
        return f"expiring in {max(left.days, 0)} days"
    missing = [h for h in hosts if not covers(dns_names(cert), h)]
    if missing:
        return f"not valid for {', '.join(missing)}"
    return None


# --------------------------------------------------------------------------- files

def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (a key is never briefly world-readable), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)          # the umask may have taken bits off a public file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    write_file(path, data, 0o600)

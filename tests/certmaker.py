"""TLS material for the tests: certificates made with cryptography under a trustme CA (any key
type, any validity window, with or without subjectAltName), OCSP responses for them, and real
ClientHellos."""
from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Leaf:
    cert: x509.Certificate
    key: object
    ca: trustme.CA

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write_pem(self, path: Path) -> Path:
        """Key and certificate in one file, mode 0600."""
        path.write_bytes(self.key_pem + self.cert_pem)
        path.chmod(0o600)
        return path

    def write_pair(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)

    def ocsp_response(self, status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD) -> bytes:
        ca_cert, ca_key = ca_parts(self.ca)
        builder = (ocsp.OCSPResponseBuilder()
                   .add_response(cert=self.cert, issuer=ca_cert, algorithm=hashes.SHA1(), cert_status=status,
                                 this_update=now() - DAY, next_update=now() + 7 * DAY,
                                 revocation_time=None, revocation_reason=None)
                   .responder_id(ocsp.OCSPResponderEncoding.HASH, ca_cert))
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def ca_parts(ca: trustme.CA):
    return (x509.load_pem_x509_certificate(ca.cert_pem.bytes()),
            serialization.load_pem_private_key(ca.private_key_pem.bytes(), None))


def make_leaf(ca: trustme.CA, *names: str, key_type: str = "ec", cn: str | None = None,
              valid_from: datetime.timedelta = -DAY, valid_to: datetime.timedelta = 30 * DAY,
              client: bool = False, ocsp_url: str | None = None) -> Leaf:
    """A leaf for `names` (subjectAltName; none: CN only), valid from now+valid_from to now+valid_to."""
    ca_cert, ca_key = ca_parts(ca)
    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    cn = cn or (names[0] if names else "leaf")
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now() + valid_from).not_valid_after(now() + valid_to)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                        critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                                        critical=False)
    if ocsp_url:      # where a client would ask about revocation, as a CA-issued certificate says
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            x509.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
    return Leaf(builder.sign(ca_key, hashes.SHA256()), key, ca)


def client_hello(server_name: str | None, **ctx_options) -> bytes:
    """The first flight of a real client (stdlib ssl), through memory BIOs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for k, v in ctx_options.items():
        setattr(ctx, k, v)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        ctx.wrap_bio(incoming, outgoing, server_hostname=server_name).do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()

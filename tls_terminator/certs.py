"""Certificates: read the configured PEM files, build one pyOpenSSL context per certificate, and
pick the context for a connection by SNI.

Every problem with a certificate file is a ConfigError naming the TOML file, the key
(`certificate[1].cert`) and, in the problem, the PEM file and what is wrong with it, so the daemon
at start, the daemon on SIGHUP and `frontgate check` all report it the same way.
"""
from __future__ import annotations

import datetime
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from frontgate.config import CertificateEntry, ConfigError, TerminatorConfig
from tls_terminator.sni import SniIndex, build_index, unusable_names

# Mozilla's "intermediate" TLS 1.2 suites (server side TLS guidelines), minus the DHE ones: those
# need DH parameters, which we do not configure, so OpenSSL would never pick them anyway. TLS 1.3
# suites are OpenSSL's defaults, which are the same as Mozilla's.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
ALPN_HTTP11 = b"http/1.1"
_SERVER_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                     ed448.Ed448PrivateKey)


@dataclass(frozen=True, eq=False)
class LoadedCertificate:
    entry: CertificateEntry
    position: int                       # index in the config's [[certificate]] array
    names: tuple[str, ...]              # DNS names the SNI index uses
    not_before: datetime.datetime
    not_after: datetime.datetime
    context: SSL.Context

    @property
    def label(self) -> str:
        return f"certificate[{self.position}] ({self.entry.cert.name})"


# --------------------------------------------------------------------------- loading

def load_certificate(cfg_path: Path, position: int, entry: CertificateEntry) -> LoadedCertificate:
    """Read and check one [[certificate]]; raises ConfigError naming the file and the problem."""
    cert_key = f"certificate[{position}].cert"

    def fail(key: str, path: Path, problem: str) -> ConfigError:
        return ConfigError(cfg_path, key, f"{path}: {problem}")

    cert_pem = _read(cfg_path, cert_key, entry.cert)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        problem = "no PEM certificate in it" if b"-----BEGIN CERTIFICATE-----" not in cert_pem else (
            f"cannot parse the PEM certificate: {_first_line(e)}")
        raise fail(cert_key, entry.cert, problem) from None

    key_field, key_path = (f"certificate[{position}].key", entry.key) if entry.key else (cert_key, entry.cert)
    key_pem = _read(cfg_path, key_field, entry.key) if entry.key else cert_pem
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:       # cryptography's way of saying "this key is encrypted"
        raise fail(key_field, key_path, "the private key is encrypted; a passphrase-less key is needed") from None
    except ValueError as e:
        problem = ("no private key in it" + ("" if entry.key else " (add it to this file or set `key`)")
                   if b"PRIVATE KEY-----" not in key_pem else f"cannot parse the private key: {_first_line(e)}")
        raise fail(key_field, key_path, problem) from None
    except Exception as e:  # e.g. unsupported key algorithms
        raise fail(key_field, key_path, f"cannot load the private key: {_first_line(e)}") from None
    if not isinstance(key, _SERVER_KEY_TYPES):
        raise fail(key_field, key_path, f"{type(key).__name__} keys cannot be used for a TLS server")

    leaf = chain[0]
    if not _same_public_key(leaf, key):
        raise fail(key_field, key_path, "the private key does not match the first certificate in "
                                        f"{entry.cert.name} (the leaf must come first in the chain)")
    try:
        names = _dns_names(leaf)
    except ValueError as e:
        raise fail(cert_key, entry.cert, f"cannot read the certificate's names: {_first_line(e)}") from None
    try:
        context = build_context(chain, key)
    except (SSL.Error, ValueError, TypeError) as e:
        raise fail(cert_key, entry.cert, f"OpenSSL refuses it: {e}") from None
    return LoadedCertificate(entry=entry, position=position, names=tuple(names),
                             not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
                             context=context)


def _read(cfg_path: Path, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(cfg_path, key, f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(cfg_path, key, f"{path}: is a directory") from None
    except OSError as e:
        raise ConfigError(cfg_path, key, f"{path}: cannot read: {e.strerror}") from None


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _same_public_key(cert: x509.Certificate, key) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    except (ValueError, TypeError):
        return False


def _dns_names(cert: x509.Certificate) -> list[str]:
    """subjectAltName dNSNames; the subject CN only when there are none (RFC 6125 6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return names


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    # The router speaks HTTP/1.1 only. A client that offers ALPN without it (h2-only) gets no ALPN
    # at all rather than a failed handshake: it may still manage, and that is its call.
    return ALPN_HTTP11 if ALPN_HTTP11 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def build_context(chain: Sequence[x509.Certificate], key: object) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_cipher_list(TLS12_CIPHERS.encode())
    # Idle connections (WebSocket tunnels) then cost no read/write buffers inside OpenSSL.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate(chain[0])
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    ctx.check_privatekey()
    ctx.set_alpn_select_callback(_select_alpn)
    return ctx


# --------------------------------------------------------------------------- the store

class CertStore:
    """The certificates of one configuration. Connections start on `initial_context` (the default
    certificate's); its SNI callback switches each connection to the chosen certificate's context."""

    def __init__(self, certificates: Sequence[LoadedCertificate], default: LoadedCertificate):
        if not certificates:
            raise ValueError("a CertStore needs at least one certificate")
        self.certificates = tuple(certificates)
        self.default = default
        self.index: SniIndex[LoadedCertificate] = build_index(((c.names, c) for c in certificates), default)
        # Must be set before the context makes its first connection (pyOpenSSL freezes it then).
        default.context.set_tlsext_servername_callback(self._on_server_name)

    @classmethod
    def from_config(cls, cfg: TerminatorConfig) -> "CertStore":
        loaded = [load_certificate(cfg.path, i, entry) for i, entry in enumerate(cfg.certificates)]
        default = next(c for c in loaded if c.entry is cfg.default_certificate)
        return cls(loaded, default)

    @property
    def initial_context(self) -> SSL.Context:
        return self.default.context

    def certificate_for(self, server_name: str | bytes | None) -> LoadedCertificate:
        return self.index.lookup(server_name)

    def context_for(self, server_name: str | bytes | None) -> SSL.Context:
        return self.index.lookup(server_name).context

    def _on_server_name(self, conn: SSL.Connection) -> None:
        # Runs inside the handshake, once the ClientHello is parsed (also when it has no SNI).
        context = self.context_for(conn.get_servername())
        if context is not conn.get_context():
            conn.set_context(context)

    def warnings(self, now: datetime.datetime | None = None) -> list[str]:
        """Things an operator should hear about that do not stop the certificates from loading."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        out = []
        for c in self.certificates:
            if c.not_after <= now:
                out.append(f"{c.label}: expired on {c.not_after:%Y-%m-%d %H:%M} UTC")
            elif c.not_after - now < datetime.timedelta(days=14):
                out.append(f"{c.label}: expires on {c.not_after:%Y-%m-%d %H:%M} UTC")
            if c.not_before > now:
                out.append(f"{c.label}: not valid before {c.not_before:%Y-%m-%d %H:%M} UTC")
            if not c.names:
                out.append(f"{c.label}: has no DNS names; it can only serve as the default")
            for name in unusable_names(c.names):
                out.append(f"{c.label}: name {name!r} can never match (only '*.' + domain wildcards are)")
            key_file = c.entry.key or c.entry.cert
            try:
                if key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                    out.append(f"{c.label}: private key file {key_file} is readable by group or others")
            except OSError:
                pass
        return out

    def describe(self) -> str:
        names = sum(len(c.names) for c in self.certificates)
        return f"{len(self.certificates)} certificates, {names} names, default {self.default.label}"


def check_certificates(cfg: TerminatorConfig) -> list[str]:
    """Problems with the configured certificate files, one line each ("file: key: problem"); empty
    when every certificate loads. For `frontgate check`."""
    errors = []
    for i, entry in enumerate(cfg.certificates):
        try:
            load_certificate(cfg.path, i, entry)
        except ConfigError as e:
            errors.append(str(e))
    return errors

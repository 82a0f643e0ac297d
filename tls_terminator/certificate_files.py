"""Certificate files: read and check one certificate (a [[certificate]] or a certs_dir file), scan
the certs_dir, and say when any file the terminator uses changed.

Where certificates come from: every [[certificate]], and every file in `certs_dir`: `name.pem`
holding the chain and its key (or the chain, with the key in `name.key`), or `name.crt` with
`name.key`. Hidden files (editors' and atomic writers' temporaries) and other names are ignored.
A DER OCSP response in `name.ocsp` next to a certificate is stapled.

Errors: every problem names the TOML key (`certificate[1].cert`, `terminator.certs_dir`) and, in the
problem, the file. At start an explicit [[certificate]] that does not load, or any key file readable
by group or others (unless allow_loose_key_permissions), stops the daemon; a broken file in
certs_dir is reported and skipped. On reload nothing stops anything: a file that does not load is
reported and the version loaded before (if any) stays in service.
"""
from __future__ import annotations

import datetime
import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from frontgate.config import CertificateEntry, ConfigError, TerminatorConfig
from tls_terminator.cert_usage import unfit_for_serving
from tls_terminator.contexts import build_context

if TYPE_CHECKING:
    from tls_terminator.certs import CertStore

log = logging.getLogger("tls-terminator")

DIR_KEY = "terminator.certs_dir"
EXPIRY_WARNING = datetime.timedelta(days=14)
_KEY_TYPES = ((rsa.RSAPrivateKey, "RSA"), (ec.EllipticCurvePrivateKey, "ECDSA"),
              (ed25519.Ed25519PrivateKey, "Ed25519"), (ed448.Ed448PrivateKey, "Ed448"))


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True, eq=False)
class LoadedCertificate:
    entry: CertificateEntry
    position: int | None                # index in [[certificate]]; None: from certs_dir
    chain: tuple[x509.Certificate, ...]
    key: object
    key_type: str                       # "RSA", "ECDSA", "Ed25519", "Ed448": one slot per type in a context
    names: tuple[str, ...]              # DNS names the SNI index uses
    not_before: datetime.datetime
    not_after: datetime.datetime
    ocsp_response: bytes | None = None  # DER, stapled when the client asks
    ocsp_file: Path | None = None
    notes: tuple[str, ...] = ()         # warnings found while loading (OCSP file problems)
    stamp: tuple = ()                   # file_stamp() of its files when they were read

    @property
    def label(self) -> str:
        if self.position is None:
            return f"{DIR_KEY} ({self.entry.cert.name})"
        return f"certificate[{self.position}] ({self.entry.cert.name})"

    @property
    def key_file(self) -> Path:
        return self.entry.key or self.entry.cert

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def valid_at(self, now: datetime.datetime) -> bool:
        return self.not_before <= now < self.not_after

    @property
    def key_detail(self) -> str:
        key = self.key
        if isinstance(key, rsa.RSAPrivateKey):
            return f"RSA {key.key_size}"
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return f"ECDSA {key.curve.name}"
        return self.key_type


# --------------------------------------------------------------------------- loading one certificate

def load_certificate(cfg_path: Path, position: int | None, entry: CertificateEntry, *,
                     allow_loose_key_permissions: bool = False) -> LoadedCertificate:
    """Read and check one certificate (a [[certificate]] at `position`, or a certs_dir file when
    None); raises ConfigError naming the key, the file and the problem."""
    cert_key = f"certificate[{position}].cert" if position is not None else DIR_KEY
    key_field = f"certificate[{position}].key" if position is not None and entry.key else cert_key
    key_path = entry.key or entry.cert

    def fail(key: str, path: Path, problem: str) -> ConfigError:
        return ConfigError(cfg_path, key, f"{path}: {problem}")

    stamp = file_stamp(entry)      # before reading: a change while we read shows up next time
    cert_pem = _read(cfg_path, cert_key, entry.cert)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        problem = "no PEM certificate in it" if b"-----BEGIN CERTIFICATE-----" not in cert_pem else (
            f"cannot parse the PEM certificate: {first_line(e)}")
        raise fail(cert_key, entry.cert, problem) from None

    key_pem = _read(cfg_path, key_field, entry.key) if entry.key else cert_pem
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:       # cryptography's way of saying "this key is encrypted"
        raise fail(key_field, key_path, "the private key is encrypted; a passphrase-less key is needed") from None
    except ValueError as e:
        problem = ("no private key in it" + ("" if entry.key else " (add it to this file or set `key`)")
                   if b"PRIVATE KEY-----" not in key_pem else f"cannot parse the private key: {first_line(e)}")
        raise fail(key_field, key_path, problem) from None
    except Exception as e:  # e.g. unsupported key algorithms
        raise fail(key_field, key_path, f"cannot load the private key: {first_line(e)}") from None
    key_type = next((name for cls, name in _KEY_TYPES if isinstance(key, cls)), None)
    if key_type is None:
        raise fail(key_field, key_path, f"{type(key).__name__} keys cannot be used for a TLS server")
    if not allow_loose_key_permissions:
        problem = loose_permissions(key_path)
        if problem:
            raise fail(key_field, key_path, problem)

    leaf = chain[0]
    unfit = unfit_for_serving(leaf)
    if unfit:
        raise fail(cert_key, entry.cert, f"cannot be served: {unfit}")
    if not _same_public_key(leaf, key):
        raise fail(key_field, key_path, "the private key does not match the first certificate in "
                                        f"{entry.cert.name} (the leaf must come first in the chain)")
    try:
        names = _dns_names(leaf)
    except ValueError as e:
        raise fail(cert_key, entry.cert, f"cannot read the certificate's names: {first_line(e)}") from None
    try:
        # OpenSSL's own opinion (key sizes, algorithms) now, not at the first handshake.
        build_context([(chain, key)], None)
    except (SSL.Error, ValueError, TypeError) as e:
        raise fail(cert_key, entry.cert, f"OpenSSL refuses it: {e}") from None
    ocsp_file = entry.cert.with_suffix(".ocsp")
    response, notes = (None, ())
    if ocsp_file.is_file():
        response, notes = _load_ocsp(ocsp_file, leaf)
    return LoadedCertificate(entry=entry, position=position, chain=tuple(chain), key=key, key_type=key_type,
                             names=tuple(names), not_before=leaf.not_valid_before_utc,
                             not_after=leaf.not_valid_after_utc, ocsp_response=response,
                             ocsp_file=ocsp_file if response else None, notes=notes, stamp=stamp)


def file_stamp(entry: CertificateEntry) -> tuple:
    """Identity of a certificate's files (cert, key, OCSP) as of now: inode, size, mtime, mode."""
    out = []
    for path in (entry.cert, entry.key, entry.cert.with_suffix(".ocsp")):
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        out.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
    return tuple(out)


def loose_permissions(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"the private key file is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                "chmod 600 it, or set allow_loose_key_permissions = true")
    return None


def _load_ocsp(path: Path, leaf: x509.Certificate) -> tuple[bytes | None, tuple[str, ...]]:
    """The DER response to staple, or None with the reason it is not stapled."""
    try:
        der = path.read_bytes()
        response = ocsp.load_der_ocsp_response(der)
    except (OSError, ValueError) as e:
        return None, (f"OCSP response {path}: cannot read it ({first_line(e)}); not stapled",)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None, (f"OCSP response {path}: status {response.response_status.name}; not stapled",)
    if response.serial_number != leaf.serial_number:
        return None, (f"OCSP response {path}: for serial {response.serial_number:x}, not this certificate's "
                      f"{leaf.serial_number:x}; not stapled",)
    if response.next_update_utc is not None and response.next_update_utc < now_utc():
        return None, (f"OCSP response {path}: stale since {response.next_update_utc:%Y-%m-%d %H:%M} UTC; "
                      "not stapled",)
    return der, ()


def _read(cfg_path: Path, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(cfg_path, key, f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(cfg_path, key, f"{path}: is a directory") from None
    except OSError as e:
        raise ConfigError(cfg_path, key, f"{path}: cannot read: {e.strerror}") from None


def first_line(e: Exception) -> str:
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


# --------------------------------------------------------------------------- certs_dir

def scan_certs_dir(directory: Path) -> list[CertificateEntry]:
    """The certificate files of a certs_dir, in name order (the order breaks ties). OSError when
    the directory cannot be listed."""
    files = sorted(p for p in directory.iterdir() if not p.name.startswith(".") and p.is_file())
    present = {p.name for p in files}
    entries = []
    for p in files:
        if p.suffix not in (".pem", ".crt"):
            continue
        key = p.with_suffix(".key")
        entries.append(CertificateEntry(cert=p, key=key if key.name in present else None))
    return entries


def files_fingerprint(cfg: TerminatorConfig) -> tuple:
    """What the poll compares: changes when any certificate, key, OCSP or CA file the config uses
    (or the certs_dir listing) changes. Cheap: stat calls only."""
    paths: list[Path] = []
    for e in cfg.certificates:
        paths += [e.cert, e.cert.with_suffix(".ocsp")] + ([e.key] if e.key else [])
    paths += [rule.ca for rule in cfg.client_auth]
    if cfg.certs_dir is not None:
        try:
            paths += sorted(p for p in cfg.certs_dir.iterdir() if not p.name.startswith("."))
        except OSError:
            pass
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), None))
    return tuple(out)



def load_all(cfg: TerminatorConfig, previous: "CertStore | None"
              ) -> tuple[list[LoadedCertificate], list[str], list[ConfigError]]:
    """(loaded, problems, fatal-at-start errors)."""
    before = {(c.entry.cert, c.entry.key): c for c in previous.certificates} if previous else {}
    loaded: list[LoadedCertificate] = []
    problems: list[str] = []
    fatal: list[ConfigError] = []
    jobs: list[tuple[int | None, CertificateEntry]] = list(enumerate(cfg.certificates))
    if cfg.certs_dir is not None:
        try:
            jobs += [(None, e) for e in scan_certs_dir(cfg.certs_dir)]
        except OSError as e:
            # Not "every file was removed": keep what was loaded from it (e.g. a chroot without it).
            kept = [c for c in before.values() if c.position is None]
            loaded += kept
            problems.append(f"{ConfigError(cfg.path, DIR_KEY, f'{cfg.certs_dir}: cannot list it: {e.strerror}')}"
                            + (f"; keeping the {len(kept)} certificates loaded from it" if kept else ""))
    for position, entry in jobs:
        old = before.get((entry.cert, entry.key))
        if old is not None and old.position == position and old.stamp == file_stamp(entry) \
                and old.entry == entry:
            # Unchanged files: no re-parsing (an RSA key's validation alone takes ~0.1 s).
            loaded.append(old)
            continue
        try:
            loaded.append(load_certificate(cfg.path, position, entry,
                                           allow_loose_key_permissions=cfg.allow_loose_key_permissions))
        except ConfigError as e:
            if position is not None or "readable by group or others" in e.problem:
                fatal.append(e)
            if old is not None:
                loaded.append(old)
                problems.append(f"{e}; keeping the previously loaded version")
            else:
                problems.append(f"{e}; skipped")
    return loaded, problems, fatal

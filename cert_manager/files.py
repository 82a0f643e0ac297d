"""cert-manager's files: the account key, a new certificate's key, the certificate in use in
certs_dir and the challenge tokens the router serves. Every write is whole (temp, fsync, rename:
frontgate.dev_ca.write_file), so the terminator and the router never read half a file.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from frontgate import dev_ca
from frontgate.acme_state import TOKEN_RE, certificate_path
from frontgate.dev_ca import write_file, write_private

_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.S)


@dataclass(frozen=True)
class InUse:
    """The certificate cert-manager last installed for a name, as the terminator reads it."""
    not_before: float
    not_after: float
    covers: bool             # its subjectAltName has the name
    fingerprint: str = ""    # sha256 of the leaf (DER), hex: the same certificate on every node


def _in_use(leaf: x509.Certificate, name: str) -> InUse:
    return InUse(not_before=leaf.not_valid_before_utc.timestamp(), not_after=leaf.not_valid_after_utc.timestamp(),
                 covers=name in dev_ca.dns_names(leaf), fingerprint=leaf.fingerprint(hashes.SHA256()).hex())


def new_key(key_type: str):
    if key_type.startswith("ec-"):
        return ec.generate_private_key(ec.SECP256R1() if key_type == "ec-p256" else ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type.split("-")[1]))


def account_key(path: Path):
    """The ACME account's key (EC P-256), made (mode 0600) when the file does not exist yet."""
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(path, dev_ca.key_pem(key))
        return key


def in_use(certs_dir: Path, name: str) -> InUse | None:
    """The installed certificate's validity, None when there is none or it does not load."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_path(certs_dir, name).read_bytes())
    except (OSError, ValueError):
        return None
    return _in_use(cert, name)


def bundle(fullchain_pem: bytes, key) -> bytes:
    """The installed file's content: the chain, then its key."""
    return fullchain_pem.rstrip(b"\n") + b"\n" + dev_ca.key_pem(key)


def checked_bundle(data: bytes, name: str) -> InUse:
    """The leaf of a bundle from elsewhere (another node, through Redis), once it is known whole:
    a certificate for `name` and the private key of that certificate; ValueError if not."""
    leaf = x509.load_pem_x509_certificate(data)
    key_pem = _PRIVATE_KEY.search(data)
    if key_pem is None:
        raise ValueError("no private key in it")
    key = serialization.load_pem_private_key(key_pem.group(0), password=None)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, pub) != \
            leaf.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise ValueError("the private key is not the certificate's")
    found = _in_use(leaf, name)
    if not found.covers:
        raise ValueError(f"the certificate does not cover {name}")
    return found


def install_bundle(certs_dir: Path, name: str, data: bytes) -> None:
    """One file, `<name>.pem`, mode 0600, written whole: the terminator's poll loads it."""
    write_private(certificate_path(certs_dir, name), data)


def install(certs_dir: Path, name: str, fullchain_pem: bytes, key) -> InUse:
    """The chain and its key as one file (install_bundle)."""
    install_bundle(certs_dir, name, bundle(fullchain_pem, key))
    return _in_use(x509.load_pem_x509_certificate(fullchain_pem), name)


def put_token(challenge_dir: Path, token: str, key_authorization: str) -> Path:
    path = challenge_dir / token
    write_file(path, key_authorization.encode("ascii"), 0o644)      # the router may run as another user
    return path


def remove_token(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def tokens_present(challenge_dir: Path) -> dict[str, str]:
    """The tokens in the challenge directory (token -> key authorization); other files are ignored."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(challenge_dir):
            if TOKEN_RE.fullmatch(entry.name) and entry.is_file():
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    found[entry.name] = Path(entry.path).read_text("ascii").strip()
    return found

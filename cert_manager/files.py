"""cert-manager's files: the account key, a new certificate's key, the certificate in use in
certs_dir and the challenge tokens the router serves. Every write is whole (temp, fsync, rename:
frontgate.dev_ca.write_file), so the terminator and the router never read half a file.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from frontgate import dev_ca
from frontgate.acme_state import certificate_path
from frontgate.dev_ca import write_file, write_private


@dataclass(frozen=True)
class InUse:
    """The certificate cert-manager last installed for a name, as the terminator reads it."""
    not_before: float
    not_after: float
    covers: bool             # its subjectAltName has the name


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
    return InUse(not_before=cert.not_valid_before_utc.timestamp(), not_after=cert.not_valid_after_utc.timestamp(),
                 covers=name in dev_ca.dns_names(cert))


def install(certs_dir: Path, name: str, fullchain_pem: bytes, key) -> InUse:
    """The chain and its key as one file, `<name>.pem`, mode 0600: the terminator's poll loads it."""
    leaf = x509.load_pem_x509_certificate(fullchain_pem)
    write_private(certificate_path(certs_dir, name), fullchain_pem.rstrip(b"\n") + b"\n" + dev_ca.key_pem(key))
    return InUse(not_before=leaf.not_valid_before_utc.timestamp(), not_after=leaf.not_valid_after_utc.timestamp(),
                 covers=name in dev_ca.dns_names(leaf))


def put_token(challenge_dir: Path, token: str, key_authorization: str) -> Path:
    path = challenge_dir / token
    write_file(path, key_authorization.encode("ascii"), 0o644)      # the router may run as another user
    return path


def remove_token(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

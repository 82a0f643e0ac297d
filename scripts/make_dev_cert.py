#!/usr/bin/env python3
"""Make a self-signed development certificate for every configured certificate file that is missing.

    make_dev_cert.py configs/tls-terminator.toml [--router-config configs/mux-router.toml]

For each [[certificate]] whose cert file does not exist: an ECDSA P-256 key and a self-signed
certificate valid 825 days (the longest publicly-trusted TLS lifetime browsers ever accepted),
with subjectAltName DNS names localhost, *.localhost and every host of every app in the router
config. Written as one PEM (key, then certificate; mode 0600) unless the entry names a separate
`key` file. Existing files are never touched; prints what it made, nothing when all exist.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from anywhere
from frontgate.config import ConfigError, load_router_config, load_terminator_config  # noqa: E402

VALID_DAYS = 825
BASE_NAMES = ("localhost", "*.localhost")


def dns_names(router_config: Path | None) -> list[str]:
    names = list(BASE_NAMES)
    if router_config is not None:
        for app in load_router_config(router_config).apps:
            # A certificate covers one label under a wildcard: "**.x" (any depth) gets "*.x".
            names.extend(h for h in (h.replace("**.", "*.", 1) for h in app.hosts) if h not in names)
    return names


def make_certificate(key, names: list[str], now: datetime.datetime | None = None) -> x509.Certificate:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "frontgate development")])
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))       # tolerate a little clock skew
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            # Ed25519/Ed448 keys (possible with an existing `key` file) sign without a separate hash.
            .sign(key, None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
                  else hashes.SHA256()))


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 from the start (never briefly world-readable), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_missing(terminator_config: Path, router_config: Path | None) -> list[str]:
    """Make what is missing; returns one line per file written."""
    config = load_terminator_config(terminator_config, require_files=False)
    missing = [c for c in config.certificates if not c.cert.exists()]
    if not missing:
        return []
    names = dns_names(router_config)
    made = []
    for entry in missing:
        if entry.key is not None and entry.key.exists():
            # A key is already there (perhaps made elsewhere): certify it rather than replace it.
            key = serialization.load_pem_private_key(entry.key.read_bytes(), password=None)
            new_key = False
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            new_key = True
        cert_pem = make_certificate(key, names).public_bytes(serialization.Encoding.PEM)
        if entry.key is None:
            write_private(entry.cert, key_pem(key) + cert_pem)
            made.append(f"made {entry.cert}: self-signed ECDSA P-256 certificate and key, "
                        f"valid {VALID_DAYS} days, for {', '.join(names)}")
            continue
        if new_key:
            write_private(entry.key, key_pem(key))
            made.append(f"made {entry.key}: ECDSA P-256 private key")
        write_private(entry.cert, cert_pem)
        made.append(f"made {entry.cert}: self-signed certificate for the key in {entry.key}, "
                    f"valid {VALID_DAYS} days, for {', '.join(names)}")
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("terminator_config", type=Path, help="tls-terminator.toml")
    p.add_argument("--router-config", type=Path,
                   help="mux-router.toml whose app hosts go into the certificate "
                        "(default: mux-router.toml next to the terminator config, if it exists)")
    args = p.parse_args(argv)
    router_config = args.router_config
    if router_config is None:
        default = args.terminator_config.parent / "mux-router.toml"
        router_config = default if default.exists() else None
    try:
        for line in make_missing(args.terminator_config, router_config):
            print(line)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Issue the development certificates from a local development CA (made once), renewing them when due.

    make_dev_cert.py configs/tls-terminator.toml [--router-config configs/mux-router.toml] [--ca-dir certs/dev-ca]

The CA (frontgate/dev_ca.py): certs/dev-ca/ca.pem and ca.key (mode 0600) beside the configs
directory, made on the first run; trust ca.pem once (README, "Trusting the development CA") and
browsers and curl accept the development certificate without warnings.

For each [[certificate]] whose cert file is missing, or is a development certificate that is due
(within 30 days of expiry, lacking a router host, issued by an earlier development CA, or
self-signed by an older frontgate): an ECDSA
P-256 key and a certificate from the CA valid 365 days, with subjectAltName DNS names localhost,
*.localhost and every host of every app in the router config. Written as one PEM (key, then
certificate; mode 0600) unless the entry names a separate `key` file, whose key is kept when it
exists. Any other certificate is never touched. Prints what it made, nothing when nothing was due.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from anywhere
from frontgate import dev_ca  # noqa: E402
from frontgate.config import CertificateEntry, ConfigError, load_router_config, load_terminator_config  # noqa: E402

BASE_NAMES = ("localhost", "*.localhost")


def dns_names(router_config: Path | None) -> list[str]:
    names = list(BASE_NAMES)
    if router_config is not None:
        for app in load_router_config(router_config).apps:
            # A certificate covers one label under a wildcard: "**.x" (any depth) gets "*.x".
            names.extend(h for h in (h.replace("**.", "*.", 1) for h in app.hosts) if h not in names)
    return names


def why_due(entry: CertificateEntry, ca: dev_ca.DevCa | None, names: list[str]) -> str | None:
    """Why this entry's certificate should be (re)issued; None to leave the file alone."""
    if not entry.cert.exists():
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(entry.cert.read_bytes())
    except ValueError:
        return None          # not ours to judge: `frontgate check` reports it
    return dev_ca.reissue_reason(cert, ca, names)


def issue(entry: CertificateEntry, ca: dev_ca.DevCa, names: list[str], reason: str) -> list[str]:
    """Write the entry's certificate (and its key when there is none); one line per file written."""
    made = []
    if entry.key is not None and entry.key.exists():
        # A key is already there (perhaps made elsewhere): certify it rather than replace it.
        key = serialization.load_pem_private_key(entry.key.read_bytes(), password=None)
        new_key = False
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        new_key = True
    cert_pem = ca.issue(key.public_key(), names).public_bytes(serialization.Encoding.PEM)
    what = f"certificate from the development CA ({ca.cert_path}), valid {dev_ca.LEAF_VALID_DAYS} days, " \
           f"for {', '.join(names)}"
    why = "" if reason == "missing" else f" (renewed: the old one was {reason})"
    if entry.key is None:
        dev_ca.write_private(entry.cert, dev_ca.key_pem(key) + cert_pem)
        return [f"made {entry.cert}: ECDSA P-256 key and {what}{why}"]
    if new_key:
        dev_ca.write_private(entry.key, dev_ca.key_pem(key))
        made.append(f"made {entry.key}: ECDSA P-256 private key")
    dev_ca.write_private(entry.cert, cert_pem)
    made.append(f"made {entry.cert}: {what}, for the key in {entry.key}{why}")
    return made


def make_due(terminator_config: Path, router_config: Path | None, ca_dir: Path) -> list[str]:
    """Make what is missing or due; returns one line per file written."""
    config = load_terminator_config(terminator_config, require_files=False)
    names = dns_names(router_config)
    made: list[str] = []

    def new_ca() -> dev_ca.DevCa:
        ca = dev_ca.create(ca_dir)
        made.append(f"made the development CA {ca.cert_path} (its key: {ca_dir / dev_ca.CA_KEY_NAME}, mode 0600); "
                    "trust it once: README, \"Trusting the development CA\"")
        return ca

    ca = dev_ca.load(ca_dir)
    if ca is not None and dev_ca.ending(ca):
        ca = new_ca()          # its leaves are then "issued by another development CA": renewed below
    due = [(entry, reason) for entry in config.certificates if (reason := why_due(entry, ca, names))]
    if due and ca is None:
        ca = new_ca()
    for entry, reason in due:
        made += issue(entry, ca, names, reason)
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("terminator_config", type=Path, help="tls-terminator.toml")
    p.add_argument("--router-config", type=Path,
                   help="mux-router.toml whose app hosts go into the certificate "
                        "(default: mux-router.toml next to the terminator config, if it exists)")
    p.add_argument("--ca-dir", type=Path,
                   help="the development CA's directory (default: certs/dev-ca beside the configs directory)")
    args = p.parse_args(argv)
    router_config = args.router_config
    if router_config is None:
        default = args.terminator_config.parent / "mux-router.toml"
        router_config = default if default.exists() else None
    ca_dir = args.ca_dir or dev_ca.default_dir(args.terminator_config.parent)
    try:
        for line in make_due(args.terminator_config, router_config, ca_dir):
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

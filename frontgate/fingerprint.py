"""A stage's config fingerprint: the sha256 of everything it reads at start or on SIGHUP, in one
place for the daemons (which report the fingerprint they run, frontgate.process_status) and for
`make deploy`, `frontgate reload` and `frontgate status` (which compare it with the files on disk).

What a stage reads: its own TOML; the checker also the router config its `router_config` names
(the server list), and so does cert-manager (the apps marked acme = true); the terminator also the certificate and key files of its [[certificate]] entries,
and the client-certificate rules it takes from the router config its `router_config` names (with
those CA files).
"""
from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

from frontgate.config import ConfigError, load_terminator_config


def stage_files(stage: str, own: Path) -> list[Path]:
    """The files whose content `stage` depends on, in a fixed order; `own` is its TOML."""
    if stage in ("health-checker", "cert-manager"):
        # The checker's server list; cert-manager's apps marked acme = true (when it follows them).
        table = "checker" if stage == "health-checker" else "cert_manager"
        try:
            router = tomllib.loads(own.read_text())[table]["router_config"]
            return [own, own.parent / router]
        except (OSError, ValueError, KeyError, TypeError):
            return [own]       # invalid: `frontgate check` reports it; the TOML alone still fingerprints
    if stage == "tls-terminator":
        try:
            cfg = load_terminator_config(own, require_files=False)
        except ConfigError:
            return [own]
        # A renewed certificate is a changed config: `frontgate reload` makes the terminator load it.
        # Its client-certificate CAs (the rules themselves come from the router's apps: see
        # stage_fingerprint; the rest of the router's file is none of its business).
        return [own, *(p for c in cfg.certificates for p in (c.cert, c.key) if p is not None),
                *(rule.ca for rule in cfg.client_auth)]
    return [own]


def stage_fingerprint(stage: str, own: Path) -> str:
    h = hashlib.sha256()
    if stage == "tls-terminator":
        h.update(_client_auth_rules(own))
    for path in stage_files(stage, own):
        # Contents only (not paths): moving the checkout does not make every stage "changed".
        h.update(b"\0file\0")
        try:
            h.update(path.read_bytes())
        except OSError as e:
            h.update(f"unreadable: {e.strerror}".encode())
    return h.hexdigest()


def _client_auth_rules(own: Path) -> bytes:
    """What the terminator takes from the router's file: the client-certificate rules."""
    try:
        rules = load_terminator_config(own, require_files=False).client_auth
    except ConfigError:
        return b""
    return repr([(rule.sni, rule.verify, str(rule.ca)) for rule in rules]).encode()

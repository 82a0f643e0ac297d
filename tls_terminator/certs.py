"""Certificates in service: choose per server name, and build the pyOpenSSL contexts that the front
context's SNI callback switches to (the files are read by tls_terminator.certificate_files).

Choosing: names come from subjectAltName dNSNames (the subject CN only without any). Per name, per
key type (RSA, ECDSA, Ed25519, Ed448), the certificate valid now with the latest expiry wins (a
certificate valid now beats any that is not; then later expiry; then configuration order). The
winners for a name share one context, and OpenSSL serves whichever the client can verify (TLS 1.2:
the cipher suite's key type; TLS 1.3: the client's signature algorithms).
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from frontgate import client_auth, names
from frontgate.client_auth import ClientAuthRule
from frontgate.config import CertificateEntry, ConfigError, TerminatorConfig
from tls_terminator.certificate_files import (
    DIR_KEY,
    EXPIRY_WARNING,
    LoadedCertificate,
    file_stamp,
    first_line,
    load_all,
    loose_permissions,
    now_utc,
)
from tls_terminator.contexts import (
    VERIFY_MODES,
    build_context,
    client_cas,
    ocsp_callback,
)

log = logging.getLogger("tls-terminator")

_SLOT_ORDER = {"ECDSA": 0, "Ed25519": 1, "Ed448": 2, "RSA": 3}    # the first is the "primary" of a set


@dataclass(eq=False)
class CertSet:
    """The certificates one name is served with (at most one per key type) and their context."""
    certificates: tuple[LoadedCertificate, ...]
    cfg: TerminatorConfig
    context: SSL.Context = field(init=False)
    _mtls: dict[int, SSL.Context] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.context = self._build(None, 0)

    @property
    def primary(self) -> LoadedCertificate:
        return self.certificates[0]

    def _build(self, rule: ClientAuthRule | None, index: int) -> SSL.Context:
        ctx = build_context([(c.chain, c.key) for c in self.certificates], self.cfg, rule, index)
        responses = {c.leaf.public_bytes(serialization.Encoding.DER): c.ocsp_response
                     for c in self.certificates if c.ocsp_response}
        if responses:
            ctx.set_ocsp_server_callback(ocsp_callback, responses)
        return ctx

    def context_with_client_auth(self, index: int) -> SSL.Context:
        ctx = self._mtls.get(index)
        if ctx is None:
            ctx = self._mtls[index] = self._build(self.cfg.client_auth[index], index)
        return ctx


def choose(candidates: Iterable[LoadedCertificate], now: datetime.datetime) -> tuple[LoadedCertificate, ...]:
    """Per key type, the best certificate: valid now, then the latest expiry, then the first
    configured. Pure; the result is ordered ECDSA, Ed25519, Ed448, RSA."""
    best: dict[str, LoadedCertificate] = {}
    for c in candidates:
        current = best.get(c.key_type)
        if current is None or (c.valid_at(now), c.not_after) > (current.valid_at(now), current.not_after):
            best[c.key_type] = c
    return tuple(sorted(best.values(), key=lambda c: _SLOT_ORDER[c.key_type]))


# --------------------------------------------------------------------------- the store

class CertStore:
    """The certificates of one configuration, indexed by name. `on_server_name` is the front
    context's SNI callback: it switches each connection to the context of the chosen set."""

    def __init__(self, cfg: TerminatorConfig, certificates: Sequence[LoadedCertificate],
                 default: LoadedCertificate, problems: Sequence[str] = (), now: datetime.datetime | None = None,
                 previous: "CertStore | None" = None):
        if not certificates:
            raise ValueError("a CertStore needs at least one certificate")
        now = now or now_utc()
        self.cfg = cfg
        self.certificates = tuple(certificates)
        self.default = default
        self.problems = list(problems)       # files that did not load (reported, skipped)
        by_name: dict[str, list[LoadedCertificate]] = {}
        for c in self.certificates:
            for name in dict.fromkeys(names.certificate_patterns(c.names)[0]):
                by_name.setdefault(name, []).append(c)
        sets: dict[tuple[int, ...], CertSet] = {}
        # The previous store's contexts serve again when their certificates are the same objects
        # (files unchanged) and nothing that goes into a context changed.
        self.ca_stamps = tuple(file_stamp(CertificateEntry(cert=rule.ca)) for rule in cfg.client_auth)
        reusable = (previous.sets if previous is not None and previous.cfg.tls == cfg.tls
                    and previous.cfg.client_auth == cfg.client_auth and previous.ca_stamps == self.ca_stamps
                    else {})

        def intern(chosen: tuple[LoadedCertificate, ...]) -> CertSet:
            key = tuple(id(c) for c in chosen)
            if key not in sets:
                old = reusable.get(key)
                sets[key] = old if old is not None and old.certificates == chosen else CertSet(chosen, cfg)
            return sets[key]

        named = [((name,), intern(choose(group, now))) for name, group in by_name.items()]
        default_names = names.certificate_patterns(default.names)[0]
        default_set = next((s for (n,), s in named if n in default_names and default in s.certificates), None)
        self.default_set = default_set or intern((default,))
        self.index: names.NameIndex[CertSet] = names.build_index(named, self.default_set)
        self.sets = sets
        # The router judges hosts by this same index (client_auth.rule_index over the same rules).
        self.client_auth = client_auth.rule_index(cfg.client_auth)

    # ---- loading

    @classmethod
    def load(cls, cfg: TerminatorConfig, previous: "CertStore | None" = None, strict: bool = True) -> "CertStore":
        """strict (at start): an explicit [[certificate]] that does not load, or a loose key file,
        raises ConfigError. Otherwise (reload) such files are reported in `problems` and their
        previous version, if any, stays. Raises ConfigError when no certificate is left."""
        loaded, problems, fatal = load_all(cfg, previous)
        if strict and fatal:
            raise fatal[0]
        for rule_index, rule in enumerate(cfg.client_auth):
            try:
                if not client_cas(rule.ca):
                    raise ValueError("no certificate in it")
            except (OSError, ValueError) as e:
                raise ConfigError(cfg.path, f"client_auth[{rule_index}].ca",
                                  f"{rule.ca}: cannot load the CA bundle: {first_line(e)}") from None
        if not loaded:
            raise ConfigError(cfg.path, "certificate" if cfg.certificates else DIR_KEY,
                              "no usable certificate" + (f" ({problems[0]})" if problems else ""))
        default_entry = cfg.default_certificate
        default = next((c for c in loaded if default_entry is not None and c.entry == default_entry), loaded[0])
        return cls(cfg, loaded, default, problems, previous=previous)

    @classmethod
    def from_config(cls, cfg: TerminatorConfig) -> "CertStore":
        return cls.load(cfg, strict=True)

    # ---- choosing

    def _set_for(self, server_name: str | bytes | None) -> CertSet:
        """What a client asking for `server_name` is served (for reports: a name that the
        handshake would refuse gets the default here)."""
        try:
            name = names.sni_name(server_name)
        except names.BadName:
            name = None
        return self.index.lookup(name)

    def certificate_for(self, server_name: str | bytes | None) -> LoadedCertificate:
        return self._set_for(server_name).primary

    def context_for(self, server_name: str | bytes | None) -> SSL.Context:
        return self._set_for(server_name).context

    def on_server_name(self, conn: SSL.Connection) -> None:
        """Runs inside the handshake, once the ClientHello is parsed (also when it has no SNI).
        Raises names.BadName for a server name that is not a host name: the handshake fails."""
        name = names.sni_name(conn.get_servername())
        cert_set = self.index.lookup(name)
        rule = self.client_auth.lookup(name)
        if rule is None:
            conn.set_context(cert_set.context)
            return
        rule_index = self.cfg.client_auth.index(rule)
        conn.set_context(cert_set.context_with_client_auth(rule_index))
        # The verify mode is the connection's own (copied from the front context when it was made).
        conn.set_verify(VERIFY_MODES[rule.verify])

    # ---- reporting

    def warnings(self, now: datetime.datetime | None = None) -> list[str]:
        """Things an operator should hear about that do not stop the certificates from loading."""
        now = now or now_utc()
        out = []
        for c in self.certificates:
            if c.not_after <= now:
                out.append(f"{c.label}: expired on {c.not_after:%Y-%m-%d %H:%M} UTC")
            elif c.not_after - now < EXPIRY_WARNING:
                out.append(f"{c.label}: expires on {c.not_after:%Y-%m-%d %H:%M} UTC")
            if c.not_before > now:
                out.append(f"{c.label}: not valid before {c.not_before:%Y-%m-%d %H:%M} UTC")
            if not c.names:
                out.append(f"{c.label}: has no DNS names; it can only serve as the default")
            for name in names.certificate_patterns(c.names)[1]:
                out.append(f"{c.label}: name {name!r} can never match (only '*.' + domain wildcards are)")
            problem = loose_permissions(c.key_file)
            if problem:
                out.append(f"{c.label}: {c.key_file}: {problem}")
            out.extend(f"{c.label}: {note}" for note in c.notes)
        return out

    def describe(self) -> str:
        names = sum(len(c.names) for c in self.certificates)
        return f"{len(self.certificates)} certificates, {names} names, default {self.default.label}"



def client_cert_subject(conn: SSL.Connection) -> str | None:
    """The verified client certificate's CN (what HAProxy sends in PP2_SUBTYPE_SSL_CN), or its whole
    subject (RFC 4514) when it has no CN; None without a client certificate."""
    cert = conn.get_peer_certificate(as_cryptography=True)
    if cert is None:
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return printable(str(cns[0].value) if cns else cert.subject.rfc4514_string())


def printable(text: str) -> str:
    """ASCII without control characters (backslash escapes instead): the router puts this in an
    HTTP header, where a CR or LF from a certificate must never split it."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else c.encode("unicode_escape").decode("ascii") for c in text)

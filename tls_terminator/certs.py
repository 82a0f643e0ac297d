"""Certificates: read the configured PEM files and the certs_dir, choose per server name, and build
the pyOpenSSL contexts that the front context's SNI callback switches to.

Where certificates come from: every [[certificate]], and every file in `certs_dir`: `name.pem`
holding the chain and its key (or the chain, with the key in `name.key`), or `name.crt` with
`name.key`. Hidden files (editors' and atomic writers' temporaries) and other names are ignored.
A DER OCSP response in `name.ocsp` next to a certificate is stapled.

Choosing: names come from subjectAltName dNSNames (the subject CN only without any). Per name, per
key type (RSA, ECDSA, Ed25519, Ed448), the certificate valid now with the latest expiry wins (a
certificate valid now beats any that is not; then later expiry; then configuration order). The
winners for a name share one context, and OpenSSL serves whichever the client can verify (TLS 1.2:
the cipher suite's key type; TLS 1.3: the client's signature algorithms).

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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from frontgate import client_auth, names
from frontgate.client_auth import ClientAuthRule
from frontgate.config import CertificateEntry, ConfigError, TerminatorConfig, TlsPolicy
from tls_terminator.cert_usage import unfit_for_serving
from tls_terminator.tls import new_context

log = logging.getLogger("tls-terminator")

DIR_KEY = "terminator.certs_dir"
EXPIRY_WARNING = datetime.timedelta(days=14)
_KEY_TYPES = ((rsa.RSAPrivateKey, "RSA"), (ec.EllipticCurvePrivateKey, "ECDSA"),
              (ed25519.Ed25519PrivateKey, "Ed25519"), (ed448.Ed448PrivateKey, "Ed448"))
_SLOT_ORDER = {"ECDSA": 0, "Ed25519": 1, "Ed448": 2, "RSA": 3}    # the first is the "primary" of a set
_VERIFY_MODES = {"required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, "optional": SSL.VERIFY_PEER}


def _now() -> datetime.datetime:
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
            f"cannot parse the PEM certificate: {_first_line(e)}")
        raise fail(cert_key, entry.cert, problem) from None

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
        raise fail(cert_key, entry.cert, f"cannot read the certificate's names: {_first_line(e)}") from None
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
        return None, (f"OCSP response {path}: cannot read it ({_first_line(e)}); not stapled",)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None, (f"OCSP response {path}: status {response.response_status.name}; not stapled",)
    if response.serial_number != leaf.serial_number:
        return None, (f"OCSP response {path}: for serial {response.serial_number:x}, not this certificate's "
                      f"{leaf.serial_number:x}; not stapled",)
    if response.next_update_utc is not None and response.next_update_utc < _now():
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


# --------------------------------------------------------------------------- contexts

def build_context(certs: Sequence[tuple[Sequence[x509.Certificate], object]], cfg: TerminatorConfig | None,
                  rule: ClientAuthRule | None = None, rule_index: int = 0) -> SSL.Context:
    """One context serving `certs` (one per key type), with the [tls] policy of `cfg` and, with
    `rule`, asking for a client certificate."""
    policy = cfg.tls if cfg is not None else TlsPolicy()
    ctx = new_context(policy, cfg.path if cfg is not None else "")
    for chain, key in certs:
        if len(certs) == 1 or len(chain) == 1:
            ctx.use_certificate(chain[0])
            for extra in chain[1:]:
                ctx.add_extra_chain_cert(extra)
        else:
            # Several key types with their own chains: only the chain-file call gives each
            # certificate its own chain (extra chain certs are shared by all of them).
            _use_chain(ctx, chain)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    if rule is not None:
        ctx.load_verify_locations(str(rule.ca))
        ctx.set_client_ca_list([crypto.X509.from_cryptography(c).get_subject() for c in _client_cas(rule.ca)])
        ctx.set_verify(_VERIFY_MODES[rule.verify])
        # Sessions made without a client certificate must not resume here.
        ctx.set_session_id(f"frontgate-mtls-{rule_index}".encode())
    return ctx


def _use_chain(ctx: SSL.Context, chain: Sequence[x509.Certificate]) -> None:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    try:
        with tempfile.NamedTemporaryFile(prefix="frontgate-chain-", suffix=".pem") as f:
            f.write(pem)
            f.flush()
            ctx.use_certificate_chain_file(f.name)
    except OSError:
        # No writable temporary directory (a bare chroot): the shared extra chain still serves
        # certificates whose chains have the same intermediates.
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)


def _client_cas(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _ocsp_callback(conn: SSL.Connection, responses: dict[bytes, bytes]) -> bytes:
    # Runs after OpenSSL chose the certificate for this client: staple that one's response.
    cert = conn.get_certificate(as_cryptography=True)
    if cert is None:
        return b""
    return responses.get(cert.public_bytes(serialization.Encoding.DER), b"")


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
            ctx.set_ocsp_server_callback(_ocsp_callback, responses)
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
        now = now or _now()
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
        loaded, problems, fatal = _load_all(cfg, previous)
        if strict and fatal:
            raise fatal[0]
        for rule_index, rule in enumerate(cfg.client_auth):
            try:
                if not _client_cas(rule.ca):
                    raise ValueError("no certificate in it")
            except (OSError, ValueError) as e:
                raise ConfigError(cfg.path, f"client_auth[{rule_index}].ca",
                                  f"{rule.ca}: cannot load the CA bundle: {_first_line(e)}") from None
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
        conn.set_verify(_VERIFY_MODES[rule.verify])

    # ---- reporting

    def warnings(self, now: datetime.datetime | None = None) -> list[str]:
        """Things an operator should hear about that do not stop the certificates from loading."""
        now = now or _now()
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


def _load_all(cfg: TerminatorConfig, previous: CertStore | None
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


def check_certificates(cfg: TerminatorConfig) -> list[str]:
    """Problems with the certificate files (and the [tls] ciphers, and client CA bundles), one line
    each ("file: key: problem"); empty when everything loads. For `frontgate check`."""
    try:
        new_context(cfg.tls, cfg.path)
    except ConfigError as e:
        return [str(e)]
    _, problems, _ = _load_all(cfg, None)
    errors = [p.removesuffix("; skipped") for p in problems]
    if not errors:
        try:
            CertStore.load(cfg, strict=False)
        except ConfigError as e:
            errors.append(str(e))
    return errors


def describe_certificates(cfg: TerminatorConfig, now: datetime.datetime | None = None) -> list[dict]:
    """What `frontgate certs` lists: one dict per certificate file (loaded or not), in load order.
    Keys: file, key_file, source, names, subject, issuer, key_type, not_before, not_after (ISO
    8601 UTC), days_left, status ("valid", "expired", "not yet valid"), ocsp (file or None),
    default (bool); a file that does not load has only file, source and error."""
    now = now or _now()
    loaded, problems, _ = _load_all(cfg, None)
    default_entry = cfg.default_certificate
    default = next((c for c in loaded if default_entry is not None and c.entry == default_entry),
                   loaded[0] if loaded else None)
    rows: list[dict] = []
    for c in loaded:
        status = "expired" if c.not_after <= now else "not yet valid" if c.not_before > now else "valid"
        rows.append({
            "file": str(c.entry.cert), "key_file": str(c.key_file),
            "source": "certs_dir" if c.position is None else f"certificate[{c.position}]",
            "names": list(c.names), "subject": c.leaf.subject.rfc4514_string(),
            "issuer": c.leaf.issuer.rfc4514_string(), "key_type": c.key_detail,
            "not_before": c.not_before.isoformat(), "not_after": c.not_after.isoformat(),
            "days_left": (c.not_after - now).days, "status": status,
            "ocsp": str(c.ocsp_file) if c.ocsp_file else None, "default": c is default,
        })
    for p in problems:
        # "file: key: /path: problem; skipped"
        rest = p.split(": ", 2)[2] if p.count(": ") >= 2 else p
        file, _, reason = rest.partition(": ")
        rows.append({"file": file, "source": p.split(": ", 2)[1] if p.count(": ") >= 2 else "",
                     "error": reason.removesuffix("; skipped")})
    return rows


def format_certificates(rows: list[dict]) -> str:
    """`frontgate certs` output: one block per certificate."""
    out = []
    for r in rows:
        if "error" in r:
            where = f"{r['file']}  [{r['source']}]\n  " if "file" in r else ""   # a config error has no file
            out.append(f"{where}ERROR: {r['error']}")
            continue
        flags = " (default)" if r["default"] else ""
        # A certificate without DNS names (the development CA) is shown by its subject.
        names = f"names:   {', '.join(r['names'])}" if r["names"] else f"subject: {r['subject']}"
        out.append(
            f"{r['file']}  [{r['source']}]{flags}\n"
            f"  {names}\n"
            f"  issuer:  {r['issuer']}\n"
            f"  key:     {r['key_type']}\n"
            f"  expires: {r['not_after']}  ({r['days_left']} days left, {r['status']})\n"
            f"  ocsp:    {r['ocsp'] or '-'}")
    return "\n".join(out)


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


"""tls-terminator.toml: the listener, certificates, [tls], passthrough, privileges; client
certificate rules come from the router's apps (router_config)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from frontgate.client_auth import ClientAuthRule
from frontgate.config.common import AdminConfig, admin_table, workers_key
from frontgate.config.router import load_router_config
from frontgate.config.schema import Address, ConfigError, Table, host_pattern, load


@dataclass(frozen=True)
class CertificateEntry:
    cert: Path
    key: Path | None = None      # None: the key is in the cert PEM
    default: bool = False


TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")    # in order


SERVER_CIPHER_ORDER = ("tls1.2", "always", "never")
ALPN_PROTOCOLS = ("h2", "http/1.1")     # what the router speaks to clients; the default offer, in order


@dataclass(frozen=True)
class TlsPolicy:
    """[tls]: protocol versions, ciphers, session resumption. None = the built-in default
    (Mozilla "intermediate"), which tls_terminator.tls spells out."""
    min_version: str = "TLSv1.2"
    max_version: str = "TLSv1.3"
    ciphers: str | None = None            # TLS 1.2 and below, OpenSSL cipher string
    ciphersuites: str | None = None       # TLS 1.3, OpenSSL ciphersuites string
    groups: tuple[str, ...] | None = None  # key exchange groups (curves), OpenSSL names, preferred first
    # "tls1.2": the server's order for TLS 1.2 (scanners rate a missing order as a weakness), the
    # client's for TLS 1.3 (Mozilla: clients without AES hardware pick ChaCha20); or "always", "never".
    prefer_server_ciphers: str = "tls1.2"
    session_tickets: bool = True          # stateless tickets; false: server-side session cache only
    session_timeout: int = 3600           # seconds a session (ticket or cache entry) can be resumed
    alpn: tuple[str, ...] = ALPN_PROTOCOLS  # [terminator] alpn: offered by ALPN, preferred first


@dataclass(frozen=True)
class PassthroughRoute:
    """[[passthrough]]: relay the raw TLS stream, undecrypted, when the SNI matches."""
    sni: tuple[str, ...]
    backend: Address
    proxy_protocol: bool = False          # send a PROXY v2 header (client address, SNI) first


@dataclass(frozen=True)
class TerminatorConfig:
    path: Path
    listen: Address
    forward_to: Address
    workers: int
    handshake_timeout: float
    idle_timeout: float
    max_connections: int
    certificates: tuple[CertificateEntry, ...]
    certs_dir: Path | None = None
    certs_poll_interval: float = 5.0      # 0: no polling (SIGHUP only)
    allow_loose_key_permissions: bool = False
    user: str | None = None               # privileges dropped to these after binding (as root)
    group: str | None = None
    chroot: Path | None = None
    tls: TlsPolicy = TlsPolicy()
    client_auth: tuple[ClientAuthRule, ...] = ()   # from router_config's apps (client_ca)
    router_config: Path | None = None
    passthrough: tuple[PassthroughRoute, ...] = ()
    grace: float = 10.0                   # SIGTERM: seconds busy connections get to finish
    admin: AdminConfig | None = None      # [admin]: metrics and stats listener; None = none

    @property
    def default_certificate(self) -> CertificateEntry | None:
        """None when every certificate comes from certs_dir (then the first file by name)."""
        return next((c for c in self.certificates if c.default), self.certificates[0] if self.certificates else None)


def _build_terminator(root: Table, require_files: bool) -> TerminatorConfig:
    t = root.table("terminator", default_empty=False)
    cfg_args = dict(
        listen=t.address("listen"),
        forward_to=t.address("forward_to"),
        workers=workers_key(t),
        handshake_timeout=t.positive_seconds("handshake_timeout", 10.0),
        idle_timeout=t.positive_seconds("idle_timeout", 3600.0),
        max_connections=t.int("max_connections", 10000, 1, 1_000_000),
        certs_dir=t.path("certs_dir", None),
        certs_poll_interval=t.number("certs_poll_interval", 5.0, 0, 86400),
        allow_loose_key_permissions=t.bool("allow_loose_key_permissions", False),
        user=t.str("user", None),
        group=t.str("group", None),
        chroot=t.path("chroot", None),
        grace=t.positive_seconds("grace", 10.0),
        router_config=t.path("router_config", None),
    )
    alpn = _alpn(t)
    router_config = cfg_args["router_config"]
    if require_files and cfg_args["certs_dir"] is not None and not cfg_args["certs_dir"].is_dir():
        raise t.error("certs_dir", f"{str(cfg_args['certs_dir'])!r} is not a directory")
    if require_files:
        _check_account(t, cfg_args["user"], cfg_args["group"])
    t.done()
    certs = []
    for ct in root.tables("certificate"):
        entry = CertificateEntry(cert=ct.path("cert"), key=ct.path("key", None), default=ct.bool("default", False))
        for k in ("cert", "key"):
            p = getattr(entry, k)
            if require_files and p is not None and not p.is_file():
                raise ct.error(k, f"file {str(p)!r} not found")
        ct.done()
        certs.append(entry)
    if not certs and cfg_args["certs_dir"] is None:
        raise ConfigError(root.file, "certificate", "at least one [[certificate]] or terminator.certs_dir is needed")
    if sum(c.default for c in certs) > 1:
        raise ConfigError(root.file, "certificate", "only one certificate can have default = true")

    tt = root.table("tls")
    tls = TlsPolicy(
        min_version=tt.str("min_version", "TLSv1.2", TLS_VERSIONS),
        max_version=tt.str("max_version", "TLSv1.3", TLS_VERSIONS),
        ciphers=tt.str("ciphers", None),
        ciphersuites=tt.str("ciphersuites", None),
        groups=_tls_groups(tt),
        prefer_server_ciphers=tt.str("prefer_server_ciphers", "tls1.2", SERVER_CIPHER_ORDER),
        session_tickets=tt.bool("session_tickets", True),
        session_timeout=tt.int("session_timeout", 3600, 1, 7 * 86400),
        alpn=alpn,
    )
    if TLS_VERSIONS.index(tls.min_version) > TLS_VERSIONS.index(tls.max_version):
        raise tt.error("min_version", f"{tls.min_version} is above max_version {tls.max_version}")
    tt.done()

    if "client_auth" in root.data:
        raise ConfigError(root.file, "client_auth", "client certificates are declared on the router's apps now "
                          "(client_ca = \"...\" in an [[app]] of mux-router.toml), and the terminator follows "
                          "them through terminator.router_config")
    client_auth_rules: tuple[ClientAuthRule, ...] = ()
    if router_config is not None:
        try:
            client_auth_rules = load_router_config(router_config).client_auth_rules
        except ConfigError as e:
            raise ConfigError(root.file, "terminator.router_config", f"cannot load: {e}") from None

    passthrough = []
    for pt in root.tables("passthrough"):
        route = PassthroughRoute(sni=_sni_patterns(pt), backend=pt.address("backend"),
                                 proxy_protocol=pt.bool("proxy_protocol", False))
        pt.done()
        passthrough.append(route)
    admin = admin_table(root, (root.file.parent / "../state/stats").resolve())
    return TerminatorConfig(path=root.file, certificates=tuple(certs), tls=tls, client_auth=client_auth_rules,
                            passthrough=tuple(passthrough), admin=admin, **cfg_args)


def _alpn(t: Table) -> tuple[str, ...]:
    """[terminator] alpn: the protocols offered to clients by ALPN, preferred first (the router
    learns the choice from the PROXY header): "h2" and "http/1.1", each once, at least one."""
    values = t.str_list("alpn", list(ALPN_PROTOCOLS))
    if not values:
        raise t.error("alpn", f"offer at least one of {', '.join(map(repr, ALPN_PROTOCOLS))}")
    for value in values:
        if value not in ALPN_PROTOCOLS:
            raise t.error("alpn", f"{value!r} is not a protocol the router speaks "
                                  f"({', '.join(map(repr, ALPN_PROTOCOLS))})")
    if len(set(values)) != len(values):
        raise t.error("alpn", "a protocol is named twice")
    return values


def _tls_groups(t: Table) -> tuple[str, ...] | None:
    """[tls] groups: a list of plain group names (whether OpenSSL knows each is checked where the
    context is made, tls_terminator.tls); None when absent."""
    if "groups" not in t.data:
        t.used.add("groups")
        return None
    groups = t.str_list("groups")
    if not groups:
        raise t.error("groups", "an empty list leaves no key exchange: name at least one group, e.g. \"X25519\"")
    for i, name in enumerate(groups):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConfigError(t.file, f"{t.key('groups')}[{i}]", f"{name!r} is not a group name (letters, digits, '-', '_')")
    lowered = [g.lower() for g in groups]        # OpenSSL's names are case-insensitive
    duplicates = sorted({g for g in groups if lowered.count(g.lower()) > 1})
    if duplicates:
        raise t.error("groups", f"{', '.join(map(repr, duplicates))} listed twice")
    return groups


def _sni_patterns(t: Table) -> tuple[str, ...]:
    patterns = t.str_or_list("sni")
    if not patterns:
        raise t.error("sni", "required: a server name, a '*.suffix' pattern, or a list of them")
    return tuple(host_pattern(t, "sni", i, n, subtree=False) for i, n in enumerate(patterns))


def _check_account(t: Table, user: str | None, group: str | None) -> None:
    """The user and group to drop to must exist (looked up before any chroot)."""
    import grp
    import pwd
    for key, name, lookup in (("user", user, pwd.getpwnam), ("group", group, grp.getgrnam)):
        if name is None:
            continue
        try:
            lookup(name)
        except KeyError:
            raise t.error(key, f"no {key} named {name!r} on this system") from None


def load_terminator_config(path: str | Path, require_files: bool = True) -> TerminatorConfig:
    """`require_files=False` lets the dev-certificate script read the config before the files exist."""
    return load(path, lambda root: _build_terminator(root, require_files))

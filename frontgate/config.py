"""Loading and validation of the three daemons' TOML files.

Every problem becomes one ConfigError naming the file, the key path and what is wrong, so that
`frontgate check` and a daemon at start print the same single line. Unknown keys are errors:
a typo must never be silently ignored. Relative paths resolve against the TOML file's directory,
so a config means the same thing whatever directory a daemon is started from.
"""
from __future__ import annotations

import functools
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from frontgate import client_auth, names, routes_config
from frontgate.client_auth import ClientAuthRule, ClientCert
from frontgate.routes_config import RoutesConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    def __init__(self, file: str | Path, key: str, problem: str):
        self.file, self.key, self.problem = str(file), key, problem
        super().__init__(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")


# --------------------------------------------------------------------------- addresses

@dataclass(frozen=True)
class Address:
    """A TCP `host:port` (IPv6 in brackets) or a unix socket `unix:/path`."""
    host: str | None = None
    port: int | None = None
    path: str | None = None

    @staticmethod
    def parse(text: str) -> "Address":
        if not isinstance(text, str) or not text:
            raise ValueError("expected an address string like '127.0.0.1:8443' or 'unix:/path'")
        if text.startswith("unix:"):
            path = text[5:]
            if not path:
                raise ValueError(f"{text!r}: unix socket path is empty")
            return Address(path=path)
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"{text!r}: expected '[ipv6]:port'")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{text!r}: expected 'host:port'")
            if ":" in host:
                raise ValueError(f"{text!r}: IPv6 addresses need brackets, '[::1]:80'")
        if not port_text.isdigit():
            raise ValueError(f"{text!r}: port {port_text!r} is not a number")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"{text!r}: port {port} out of range 1-65535")
        return Address(host=host, port=port)

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:
        # Written once per address: the router names servers in every log line, state lookup and
        # pool lookup (`address.text` there: an attribute, where str() is a call).
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- [admin] (both stages)

@dataclass(frozen=True)
class AdminConfig:
    """[admin]: the loopback listener for /metrics (Prometheus) and /stats (the HTML page)."""
    address: Address
    refresh: int = 5                   # the stats page reloads itself every this many seconds
    stats_dir: Path | None = None      # per-process snapshots, so that any worker answers for all


# --------------------------------------------------------------------------- mux-router.toml

@dataclass(frozen=True)
class Listener:
    name: str
    address: Address
    proxy_protocol: bool = False
    scheme: str = "http"
    # PROXY listeners: a request whose Host is not the connection's SNI gets 421 (RFC 9110 15.5.20),
    # so that a client cannot pass the terminator's per-name checks (mTLS) for one name and then
    # ask for another on the same connection. Has no effect without proxy_protocol.
    sni_host_check: bool = True


@dataclass(frozen=True)
class Timeouts:
    http_request: float = 10.0   # the whole request head must arrive within this
    client: float = 60.0         # client inactivity in the middle of a request (body, sending)
    connect: float = 5.0         # TCP connect to a backend server
    server: float = 60.0         # waiting for the backend's response head / data
    tunnel: float = 3600.0       # idle WebSocket tunnel
    keep_alive: float = 10.0     # idle keep-alive connection: client between requests, backend in the pool
    queue: float = 5.0           # waiting for a free server slot (maxconn) before a 503
    tunnel_ping: float = 0.0     # WebSocket ping after this much client silence, closed without a pong; 0 = off


@dataclass(frozen=True)
class Server:
    address: Address
    weight: int = 1
    maxconn: int = 0             # requests in flight at once; 0 = no limit
    send_proxy: bool = False     # a PROXY v2 header starts each connection (router and checker)


@dataclass(frozen=True)
class HeaderMatch:
    name: str                    # lower-case
    regex: re.Pattern            # searched in each value of the header


@dataclass(frozen=True)
class Acl:
    path_prefix: str = "/"
    allow: tuple[Network, ...] = ()     # non-empty: only these sources
    deny: tuple[Network, ...] = ()


@dataclass(frozen=True)
class HeaderRules:
    set: tuple[tuple[str, str], ...] = ()     # replace every field of that name
    add: tuple[tuple[str, str], ...] = ()     # append a field
    delete: tuple[str, ...] = ()              # lower-case names


# Every app without rules shares this one: the router asks `rules is NO_HEADER_RULES` per request.
NO_HEADER_RULES = HeaderRules()


@dataclass(frozen=True)
class ErrorPage:
    body: bytes
    content_type: str


@dataclass(frozen=True)
class App:
    name: str
    hosts: tuple[str, ...]
    servers: tuple[Server, ...]
    path_prefix: str = "/"
    balance: str = "roundrobin"  # roundrobin | leastconn | source | uri
    retries: int = 2             # further servers tried when a connect fails
    host_regex: re.Pattern | None = None   # full match against the lower-cased host
    path_regex: re.Pattern | None = None   # searched in the path
    header: HeaderMatch | None = None
    default: bool = False        # serves what no other app matches
    redispatch: bool = True      # a retry goes to another server (else the same one again)
    passive_fall: int = 3        # refused connects in a row that mark a server down locally; 0 = never
    max_body: int = 0            # request body bytes; larger: 413. 0 = no limit
    acls: tuple[Acl, ...] = ()
    request_headers: HeaderRules = NO_HEADER_RULES
    response_headers: HeaderRules = NO_HEADER_RULES
    error_pages: Mapping[int, ErrorPage] = field(default_factory=dict, hash=False)
    client_cert: ClientCert | None = None   # client_ca: a verified client certificate is needed
    acme: bool = False           # cert-manager obtains certificates for its exact host names
    tunnel_ping: float | None = None        # None: [timeouts] tunnel_ping
    websocket: bool = True       # WebSocket upgrades tunnelled; false: refused with 403 (routing.decide)

    def server_key(self, server: Server) -> str:
        """The key of this server in the health state file."""
        key = self._server_keys.get(id(server))     # the router asks several times per request
        return key if key is not None else f"{self.name}/{server.address}"

    @functools.cached_property
    def _server_keys(self) -> dict[int, str]:
        # By id: the servers are this app's own (held in self.servers) for as long as it lives.
        return {id(s): f"{self.name}/{s.address}" for s in self.servers}


@dataclass(frozen=True)
class RedirectRule:
    code: int
    listeners: tuple[str, ...] = ()
    source_in: tuple[Network, ...] = ()
    source_not_in: tuple[Network, ...] = ()
    hosts: tuple[str, ...] = ()
    to_scheme: str | None = None
    prefix: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class RouterConfig:
    path: Path
    workers: int
    state_file: Path
    state_stale_after: float
    trusted_sources: tuple[Network, ...]
    listeners: tuple[Listener, ...]
    timeouts: Timeouts
    redirects: tuple[RedirectRule, ...]
    apps: tuple[App, ...]
    access_log: str = "all"                # all | errors (as HAProxy's dontlog-normal) | off
    access_log_format: str = "httplog"     # httplog | json
    access_log_file: Path | None = None    # appended to by every worker, reopened on SIGUSR1; None = stdout
    forwarded_for: str = "append"          # append (to a trusted source's list) | replace
    forwarded: bool = False                # also send RFC 7239 Forwarded
    retry_after: int = 5                   # Retry-After seconds on a 503
    grace: float = 10.0                    # SIGTERM: seconds in-flight requests get to finish
    error_pages: Mapping[int, ErrorPage] = field(default_factory=dict, hash=False)   # when no app is chosen
    routes: RoutesConfig | None = None     # [routes]: the dynamic route table (frontgate/routes_config.py)
    admin: AdminConfig | None = None       # [admin]: metrics and stats listener; None = none
    acme_challenge_dir: Path | None = None # ACME http-01 answers on plain listeners (mux_router.acme_challenge)

    @functools.cached_property
    def client_auth_rules(self) -> tuple[ClientAuthRule, ...]:
        """What the terminator asks for, by server name (derived from the apps' client_ca)."""
        return client_auth.terminator_rules(self.apps)

    @functools.cached_property
    def client_auth_index(self) -> names.NameIndex[ClientAuthRule | None]:
        return client_auth.rule_index(self.client_auth_rules)

    @functools.cached_property
    def routes_by_header(self) -> bool:
        """Some app has a header condition: only then does routing need a request's fields."""
        return any(app.header is not None for app in self.apps)


# --------------------------------------------------------------------------- tls-terminator.toml

@dataclass(frozen=True)
class CertificateEntry:
    cert: Path
    key: Path | None = None      # None: the key is in the cert PEM
    default: bool = False


TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")    # in order
SERVER_CIPHER_ORDER = ("tls1.2", "always", "never")


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


# --------------------------------------------------------------------------- health-checker.toml

StatusRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class CheckSpec:
    type: str = "http"                          # "tcp" | "http" | "tls"
    method: str = "GET"                         # http
    path: str = "/"                             # http
    host: str | None = None                     # http Host header / tls SNI; None: the app's first exact host
    expect_status: StatusRanges = ((200, 399),)  # http: inclusive ranges, any one matching is healthy
    expect_body: str | None = None              # http: the body (first 64 KiB) must contain this
    tls_verify: bool = False                    # tls: verify the chain and the name (off: any certificate)
    interval: float = 2.0                       # between checks of a server that is steadily up
    jitter: float = 0.1                         # each wait is the interval x (1 +- jitter): no lockstep
    fastinter: float | None = None              # while transitioning (between up and down); None: interval
    downinter: float | None = None              # while down; None: interval
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    # Flap damping (health_checker/damping.py; README "Flap damping" says why these numbers).
    flap_damping: bool = True
    flap_half_life: float = 60.0                # the penalty halves in this many seconds
    flap_suppress: float = 4.0                  # penalty (1 per state change) above which: held down
    flap_reuse: float = 2.0                     # penalty below which a held-down server is let go
    flap_max_hold: float = 600.0                # the longest hold-down after the last change


INIT_STATES = ("fully-up", "provisional")     # how a server starts: see health_checker.rise_fall


@dataclass(frozen=True)
class CheckerConfig:
    path: Path
    router: RouterConfig
    heartbeat: float
    defaults: CheckSpec
    per_app: Mapping[str, CheckSpec] = field(default_factory=dict)
    per_server: Mapping[str, CheckSpec] = field(default_factory=dict)   # by state file key "app/host:port"
    init_state: str = "fully-up"      # a new server's health: full, or provisional (down on a first failure)

    @property
    def state_file(self) -> Path:
        # One truth: the router's config says where the state lives.
        return self.router.state_file

    def spec_for(self, app_name: str, server_key: str | None = None) -> CheckSpec:
        """The check for one server: its own override, else its app's, else [defaults]."""
        if server_key is not None and server_key in self.per_server:
            return self.per_server[server_key]
        return self.per_app.get(app_name, self.defaults)


# --------------------------------------------------------------------------- validation machinery

_MISSING = object()


class _Table:
    """A TOML table being validated: typed getters that record which keys were used, so that
    `done()` can reject the rest as unknown."""

    def __init__(self, data: Any, file: Path, keypath: str):
        self.file, self.keypath = file, keypath
        if not isinstance(data, dict):
            raise ConfigError(file, keypath, f"expected a table, got {_kind(data)}")
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.keypath}.{name}" if self.keypath else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def _get(self, name: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, "required key is missing")
            return default
        value = self.data[name]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise self.error(name, f"expected {what}, got {_kind(value)}")
        return value

    def str(self, name: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(name, default, (str,), "a string")
        if choices and value is not default and value not in choices:
            raise self.error(name, f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value

    def bool(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, default, (bool,), "true or false")

    def int(self, name: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None) -> Any:
        value = self._get(name, default, (int,), "an integer")
        _check_range(self, name, value, lo, hi)
        return value

    def number(self, name: str, default: Any = _MISSING, lo: float | None = None,
               hi: float | None = None) -> Any:
        value = self._get(name, default, (int, float), "a number")
        if value is not default:
            value = float(value)
        _check_range(self, name, value, lo, hi)
        return value

    def positive_seconds(self, name: str, default: float) -> float:
        value = self.number(name, default)
        if value <= 0:
            raise self.error(name, f"must be a positive number of seconds, got {value:g}")
        return value

    def list(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, default, (list,), "an array")

    def str_list(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        values = self.list(name, default)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise ConfigError(self.file, f"{self.key(name)}[{i}]", f"expected a string, got {_kind(v)}")
        return tuple(values)

    def str_or_list(self, name: str) -> tuple[str, ...]:
        """`key = "a"` or `key = ["a", "b"]`; absent is empty."""
        if isinstance(self.data.get(name), str):
            return (self.str(name),)
        return self.str_list(name, [])

    def address(self, name: str, default: Any = _MISSING) -> Any:
        value = self.str(name, default)
        if value is default:
            return value
        try:
            address = Address.parse(value)
        except ValueError as e:
            raise self.error(name, str(e)) from None
        if address.is_unix and not os.path.isabs(address.path):
            # Like every relative path in these files: from the TOML file's directory, not the cwd.
            address = Address(path=str((self.file.parent / address.path).resolve()))
        return address

    def path(self, name: str, default: Any = _MISSING) -> Any:
        value = self.str(name, default)
        if value is default or value is None:
            return value
        if not value:
            raise self.error(name, "path is empty")
        return (self.file.parent / value).resolve() if not Path(value).is_absolute() else Path(value)

    def table(self, name: str, default_empty: bool = True) -> "_Table":
        data = self._get(name, {} if default_empty else _MISSING, (dict,), "a table")
        return _Table(data, self.file, self.key(name))

    def tables(self, name: str) -> list["_Table"]:
        """An array of tables, `[[name]]`."""
        values = self.list(name, [])
        out = []
        for i, v in enumerate(values):
            out.append(_Table(v, self.file, f"{self.key(name)}[{i}]"))
        return out

    def done(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


def _check_range(t: _Table, name: str, value: Any, lo: Any, hi: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo:g}-{hi:g}" if lo is not None and hi is not None else (
                f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            raise t.error(name, f"{value:g} is out of range ({bounds})")


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _read_toml(path: str | Path) -> tuple[Path, dict]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return path.absolute(), tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None


def _load(path: str | Path, build: Callable[[_Table], Any]) -> Any:
    file, data = _read_toml(path)
    root = _Table(data, file, "")
    result = build(root)
    root.done()
    return result


# --------------------------------------------------------------------------- host patterns

def _host_pattern(t: _Table, key: str, i: int, value: str, subtree: bool = True) -> str:
    """An exact host name, `*.suffix` (one label) or, where `subtree`, `**.suffix` (any depth), in
    the names module's normalised form."""
    try:
        return names.pattern(value, subtree=subtree)
    except names.BadName as e:
        raise ConfigError(t.file, f"{t.key(key)}[{i}]", str(e)) from None


def _networks(t: _Table, name: str, default: Any, aliases: Mapping[str, tuple[Network, ...]]) -> tuple[Network, ...]:
    out: list[Network] = []
    for i, text in enumerate(t.str_list(name, default)):
        if text in aliases:
            out.extend(aliases[text])
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            known = f" or one of {', '.join(map(repr, aliases))}" if aliases else ""
            raise ConfigError(t.file, f"{t.key(name)}[{i}]", f"{text!r} is not a CIDR network{known}") from None
    return tuple(out)


# --------------------------------------------------------------------------- mux-router.toml

def _admin(root: _Table, default_stats_dir: Path) -> AdminConfig | None:
    """[admin]; absent: no admin listener. Metrics and the stats page are for the operator only,
    with no authentication, so the address must be a loopback one."""
    if "admin" not in root.data:
        root.used.add("admin")
        return None
    t = root.table("admin")
    address = t.address("address")
    if address.is_unix:
        raise t.error("address", f"{address}: must be a TCP loopback address (127.0.0.0/8 or [::1]), not a unix socket")
    try:
        loopback = ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise t.error("address", f"{address}: must be a loopback address (127.0.0.0/8 or [::1]); "
                                 "the admin listener has no authentication")
    admin = AdminConfig(address=address, refresh=t.int("refresh", 5, 1, 3600),
                        stats_dir=t.path("stats_dir", None) or default_stats_dir)
    t.done()
    return admin


_SCHEMES = ("http", "https")
_REDIRECT_CODES = (301, 302, 303, 307, 308)


MAX_WORKERS = 64


def _workers(t: _Table) -> int:
    """`workers`: a number, or "auto": as many as the CPUs this process may run on (HAProxy's and
    stunnel's default: every core)."""
    if t.data.get("workers") == "auto":
        t.used.add("workers")
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    if isinstance(t.data.get("workers"), str):
        raise t.error("workers", f"{t.data['workers']!r}: expected a number of processes or \"auto\"")
    return t.int("workers", 1, 1, MAX_WORKERS)


DEFAULT_ACCESS_LOG_FILE = "../logs/access.log"     # from configs/: the deploy's logs/


def _access_log_file(r: _Table) -> Path | None:
    """`access_log_file`: the file the access log is appended to; "-" is stdout (None)."""
    if r.data.get("access_log_file") == "-":
        r.used.add("access_log_file")
        return None
    return r.path("access_log_file", None) or (r.file.parent / DEFAULT_ACCESS_LOG_FILE).resolve()


def _build_router(root: _Table) -> RouterConfig:
    r = root.table("router")
    workers = _workers(r)
    state_file = r.path("state_file", "state/health.json")
    stale = r.positive_seconds("state_stale_after", 15.0)
    trusted = _networks(r, "trusted_sources", ["127.0.0.1/32", "::1/128"], {})
    access_log = r.str("access_log", "all", ("all", "errors", "off"))
    access_log_format = r.str("access_log_format", "httplog", ("httplog", "json"))
    access_log_file = _access_log_file(r)
    forwarded_for = r.str("forwarded_for", "append", ("append", "replace"))
    forwarded = r.bool("forwarded", False)
    retry_after = r.int("retry_after", 5, 0, 86400)
    grace = r.positive_seconds("grace", 10.0)
    acme_challenge_dir = r.path("acme_challenge_dir", None)
    r.done()
    router_error_pages = _error_pages(root.table("error_pages"))
    # Snapshots of the workers' counters live next to the health state by default.
    admin = _admin(root, Path(state_file).parent / "stats")

    listen = root.table("listen", default_empty=False)
    listeners = []
    for name in listen.data:
        lt = listen.table(name)
        proxied = lt.bool("proxy_protocol", False)
        sni_host_check = lt.bool("sni_host_check", proxied)
        if sni_host_check and not proxied:
            # Only a PROXY header carries the SNI; a setting that can do nothing is a mistake.
            raise lt.error("sni_host_check", "needs proxy_protocol = true (the SNI comes from the PROXY header)")
        listeners.append(Listener(
            name=name,
            address=lt.address("address"),
            proxy_protocol=proxied,
            scheme=lt.str("scheme", "http", _SCHEMES),
            sni_host_check=sni_host_check,
        ))
        lt.done()
    if not listeners:
        raise ConfigError(root.file, "listen", "at least one [listen.NAME] table is needed")
    listen.done()
    _no_duplicate_addresses(root.file, "listen", [(f"listen.{l.name}.address", l.address) for l in listeners])
    unix = [l for l in listeners if l.address.is_unix]
    if workers > 1 and len(unix) > 1:
        # supervisord passes a program one socket (fcgi-program); a TCP port is shared by SO_REUSEPORT.
        raise ConfigError(root.file, f"listen.{unix[1].name}.address",
                          f"with workers = {workers} only one listener can be a unix socket "
                          f"(listen.{unix[0].name} is one): the workers share it as the one socket supervisord passes them")

    tt = root.table("timeouts")
    defaults = Timeouts()
    timeouts = Timeouts(**{k: tt.positive_seconds(k, getattr(defaults, k)) for k in Timeouts.__dataclass_fields__
                           if k != "tunnel_ping"}, tunnel_ping=tt.number("tunnel_ping", 0.0, 0.0, 86400.0))
    tt.done()

    listener_names = {l.name for l in listeners}
    redirects = []
    for rt in root.tables("redirect"):
        listeners_of = rt.str_or_list("listener")
        for name in listeners_of:
            if name not in listener_names:
                raise rt.error("listener", f"no listener named {name!r} (have: {', '.join(sorted(listener_names))})")
        aliases = {"trusted": trusted}
        rule = RedirectRule(
            code=rt.int("code", 301),
            listeners=tuple(listeners_of),
            source_in=_networks(rt, "source_in", [], aliases),
            source_not_in=_networks(rt, "source_not_in", [], aliases),
            hosts=tuple(_host_pattern(rt, "hosts", i, h) for i, h in enumerate(rt.str_list("hosts", []))),
            to_scheme=rt.str("to_scheme", None, _SCHEMES),
            prefix=rt.str("prefix", None),
            location=rt.str("location", None),
        )
        if rule.code not in _REDIRECT_CODES:
            raise rt.error("code", f"{rule.code} is not a redirect code ({', '.join(map(str, _REDIRECT_CODES))})")
        targets = [k for k in ("to_scheme", "prefix", "location") if getattr(rule, k) is not None]
        if len(targets) != 1:
            raise ConfigError(rt.file, rt.keypath, "needs exactly one of to_scheme, prefix, location")
        for k in ("prefix", "location"):
            v = getattr(rule, k)
            if v is not None and not (v.startswith("http://") or v.startswith("https://") or v.startswith("/")):
                raise rt.error(k, f"{v!r} must start with http://, https:// or /")
        rt.done()
        redirects.append(rule)

    aliases = {"trusted": trusted}
    apps = []
    for at in root.tables("app"):
        name = at.str("name")
        if not name or "/" in name:
            raise at.error("name", f"{name!r}: app names are non-empty and have no '/'")
        if name.startswith(routes_config.ROUTE_APP_PREFIX):
            raise at.error("name", f"{name!r}: names starting with {routes_config.ROUTE_APP_PREFIX!r} are the dynamic routes'")
        hosts = tuple(_host_pattern(at, "hosts", i, h) for i, h in enumerate(at.str_list("hosts", [])))
        host_regex = _regex(at, "host_regex")
        default = at.bool("default", False)
        if not hosts and host_regex is None and not default:
            raise at.error("hosts", "at least one host name (or host_regex, or default = true) is needed")
        path_prefix = at.str("path_prefix", "/")
        if not path_prefix.startswith("/"):
            raise at.error("path_prefix", f"{path_prefix!r} must start with '/'")
        servers = []
        for i, s in enumerate(at.list("servers")):
            key = f"{at.key('servers')}[{i}]"
            if isinstance(s, str):
                s = {"address": s}
            st = _Table(s, at.file, key)
            servers.append(Server(address=st.address("address"), weight=st.int("weight", 1, 0, 256),
                                  maxconn=st.int("maxconn", 0, 0, 1_000_000), send_proxy=st.bool("send_proxy", False)))
            st.done()
        if not servers:
            raise at.error("servers", "at least one server is needed")
        _no_duplicate_addresses(at.file, at.key("servers"), [(f"{at.key('servers')}[{i}]", s.address)
                                                              for i, s in enumerate(servers)])
        header = None
        if "header" in at.data:
            ht = at.table("header")
            header_name = ht.str("name")
            if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", header_name):
                raise ht.error("name", f"{header_name!r} is not a header name")
            header = HeaderMatch(name=header_name.lower(), regex=_regex(ht, "regex", _MISSING))
            ht.done()
        acls = []
        for act in at.tables("acl"):
            acl = Acl(path_prefix=act.str("path_prefix", "/"), allow=_networks(act, "allow", [], aliases),
                      deny=_networks(act, "deny", [], aliases))
            if not acl.path_prefix.startswith("/"):
                raise act.error("path_prefix", f"{acl.path_prefix!r} must start with '/'")
            act.done()
            acls.append(acl)
        app = App(name=name, hosts=hosts, path_prefix=path_prefix,
                  balance=at.str("balance", "roundrobin", _BALANCERS),
                  servers=tuple(servers), retries=at.int("retries", 2, 0, 16),
                  host_regex=host_regex, path_regex=_regex(at, "path_regex"), header=header,
                  default=default, redispatch=at.bool("redispatch", True),
                  passive_fall=at.int("passive_fall", 3, 0, 1000),
                  max_body=at.int("max_body", 0, 0, 2**62), acls=tuple(acls),
                  request_headers=_header_rules(at.table("request_headers"), _ROUTER_SET_REQUEST_FIELDS),
                  response_headers=_header_rules(at.table("response_headers")),
                  error_pages=_error_pages(at.table("error_pages")),
                  client_cert=_client_cert(at), acme=at.bool("acme", False),
                  tunnel_ping=at.number("tunnel_ping", None, 0.0, 86400.0), websocket=at.bool("websocket", True))
        at.done()
        if any(a.name == name for a in apps):
            raise at.error("name", f"duplicate app name {name!r}")
        if default and any(a.default for a in apps):
            raise at.error("default", "only one app can have default = true")
        apps.append(app)

    for app, problem in client_auth.disagreements(apps):
        raise ConfigError(root.file, f"app[{apps.index(app)}].client_ca", problem)
    return RouterConfig(path=root.file, workers=workers, state_file=state_file, state_stale_after=stale,
                        trusted_sources=trusted, listeners=tuple(listeners), timeouts=timeouts,
                        redirects=tuple(redirects), apps=tuple(apps), access_log=access_log,
                        access_log_format=access_log_format, access_log_file=access_log_file,
                        forwarded_for=forwarded_for, forwarded=forwarded, retry_after=retry_after,
                        error_pages=router_error_pages, grace=grace, admin=admin,
                        acme_challenge_dir=acme_challenge_dir,
                        routes=routes_config.parse(root, Path(state_file).parent))


_BALANCERS = ("roundrobin", "leastconn", "source", "uri")
_FIELD_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                             "upgrade", "te", "trailer", "proxy-connection"})
_FIELD_VALUE_RE = re.compile(r"[\t \x21-\x7e]*")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
                  ".json": "application/json", ".txt": "text/plain; charset=utf-8"}
MAX_ERROR_PAGE = 64 * 1024


def _client_cert(at: _Table) -> ClientCert | None:
    """`client_ca` (a PEM bundle) and `client_cert` ("required", the default, or "optional")."""
    if "client_ca" not in at.data:
        if "client_cert" in at.data:
            raise at.error("client_cert", "needs client_ca (the CA bundle that issues the certificates)")
        return None
    cert = ClientCert(ca=at.path("client_ca"), verify=at.str("client_cert", "required", client_auth.VERIFY_MODES))
    if not cert.ca.is_file():
        raise at.error("client_ca", f"file {str(cert.ca)!r} not found")
    return cert


def _regex(t: _Table, name: str, default: Any = None) -> re.Pattern | None:
    text = t.str(name, default)
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise t.error(name, f"{text!r} is not a valid regular expression: {e}") from None


# Request fields only the router writes (from the PROXY header): a rule must not forge them.
CLIENT_CERT_SUBJECT_FIELD = "X-Client-Cert-Subject"
_ROUTER_SET_REQUEST_FIELDS = frozenset({CLIENT_CERT_SUBJECT_FIELD.lower()})


def _header_rules(t: _Table, reserved: frozenset[str] = frozenset()) -> HeaderRules:
    """`{ set = { Name = "value" }, add = { Name = "value" }, delete = ["Name"] }`; `reserved`
    names are the router's own and no rule may touch them."""
    def pairs(kind: str) -> tuple[tuple[str, str], ...]:
        pt = t.table(kind)
        out = []
        for field_name in pt.data:
            value = pt.str(field_name)
            if not _FIELD_NAME_RE.fullmatch(field_name):
                raise pt.error(field_name, "not a valid header name")
            if field_name.lower() in _FRAMING_FIELDS:
                raise pt.error(field_name, "framing and connection fields cannot be changed by header rules")
            if field_name.lower() in reserved:
                raise pt.error(field_name, "only the router sets this field (from the PROXY header)")
            if not _FIELD_VALUE_RE.fullmatch(value):
                raise pt.error(field_name, "header values are printable ASCII")
            out.append((field_name, value))
        pt.done()
        return tuple(out)
    rules = HeaderRules(set=pairs("set"), add=pairs("add"))
    delete = t.str_list("delete", [])
    for i, field_name in enumerate(delete):
        if not _FIELD_NAME_RE.fullmatch(field_name) or field_name.lower() in _FRAMING_FIELDS | reserved:
            raise ConfigError(t.file, f"{t.key('delete')}[{i}]",
                              f"{field_name!r} is not a header name that header rules may delete")
    t.done()
    if not (rules.set or rules.add or delete):
        return NO_HEADER_RULES
    return HeaderRules(set=rules.set, add=rules.add, delete=tuple(n.lower() for n in delete))


def _error_pages(t: _Table) -> dict[int, ErrorPage]:
    """`{ 503 = "errors/503.html" }`: the file is read now, so a missing one is a config error."""
    pages = {}
    for code_text in t.data:
        if not code_text.isdigit() or not 400 <= int(code_text) <= 599:
            raise t.error(code_text, "error pages are keyed by a status code 400-599")
        path = t.path(code_text)
        try:
            body = path.read_bytes()
        except OSError as e:
            raise t.error(code_text, f"cannot read {str(path)!r}: {e.strerror}") from None
        if len(body) > MAX_ERROR_PAGE:
            raise t.error(code_text, f"{str(path)!r} is larger than {MAX_ERROR_PAGE} bytes")
        pages[int(code_text)] = ErrorPage(body, _CONTENT_TYPES.get(path.suffix.lower(), "text/plain; charset=utf-8"))
    t.done()
    return pages


def _no_duplicate_addresses(file: Path, key: str, entries: list[tuple[str, Address]]) -> None:
    seen: dict[Address, str] = {}
    for k, addr in entries:
        if addr in seen:
            raise ConfigError(file, k, f"{addr} is already used by {seen[addr]}")
        seen[addr] = k


def load_router_config(path: str | Path) -> RouterConfig:
    return _load(path, _build_router)


# --------------------------------------------------------------------------- tls-terminator.toml

def _build_terminator(root: _Table, require_files: bool) -> TerminatorConfig:
    t = root.table("terminator", default_empty=False)
    cfg_args = dict(
        listen=t.address("listen"),
        forward_to=t.address("forward_to"),
        workers=_workers(t),
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
    admin = _admin(root, (root.file.parent / "../state/stats").resolve())
    return TerminatorConfig(path=root.file, certificates=tuple(certs), tls=tls, client_auth=client_auth_rules,
                            passthrough=tuple(passthrough), admin=admin, **cfg_args)


def _tls_groups(t: _Table) -> tuple[str, ...] | None:
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


def _sni_patterns(t: _Table) -> tuple[str, ...]:
    patterns = t.str_or_list("sni")
    if not patterns:
        raise t.error("sni", "required: a server name, a '*.suffix' pattern, or a list of them")
    return tuple(_host_pattern(t, "sni", i, n, subtree=False) for i, n in enumerate(patterns))


def _check_account(t: _Table, user: str | None, group: str | None) -> None:
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
    return _load(path, lambda root: _build_terminator(root, require_files))


# --------------------------------------------------------------------------- health-checker.toml

_CHECK_TYPES = ("tcp", "http", "tls")
_METHOD = re.compile(r"[A-Z]{1,20}")
_STATUS_RANGE = re.compile(r"\s*([1-5][0-9][0-9])\s*(?:-\s*([1-5][0-9][0-9])\s*)?")


def parse_status_ranges(value: Any) -> StatusRanges:
    """`expect_status`: `200`, `[low, high]` (an inclusive range), or HAProxy's string form
    `"200-299,304"` (codes and ranges, comma separated). ValueError on anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        ranges = [(value, value)]
    elif (isinstance(value, list) and len(value) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
        ranges = [(value[0], value[1])]
    elif isinstance(value, str):
        ranges = []
        for part in value.split(","):
            m = _STATUS_RANGE.fullmatch(part)
            if not m:
                raise ValueError(f"{part.strip()!r} in {value!r} is not a status code or 'low-high' range")
            low = int(m.group(1))
            ranges.append((low, int(m.group(2) or low)))
    else:
        raise ValueError(f"expected a status code, [low, high] or a string like \"200-299,304\", got {value!r}")
    for low, high in ranges:
        if not 100 <= low <= high <= 599:
            raise ValueError(f"{low}-{high}: status codes within 100-599, low <= high")
    return tuple(ranges)


def _optional_seconds(t: _Table, name: str, default: float | None) -> float | None:
    if name not in t.data:
        t.used.add(name)
        return default
    return t.positive_seconds(name, 1.0)


def _check_spec(t: _Table, base: CheckSpec, allow_servers: bool = False) -> CheckSpec:
    t.used.add("expect_status")
    try:
        expect = parse_status_ranges(t.data["expect_status"]) if "expect_status" in t.data else base.expect_status
    except ValueError as e:
        raise t.error("expect_status", str(e)) from None
    jitter = t.number("jitter", base.jitter, 0.0, 0.5)
    spec = CheckSpec(
        type=t.str("type", base.type, _CHECK_TYPES),
        method=t.str("method", base.method),
        path=t.str("path", base.path),
        host=t.str("host", base.host),
        expect_status=expect,
        expect_body=t.str("expect_body", base.expect_body),
        tls_verify=t.bool("tls_verify", base.tls_verify),
        interval=t.positive_seconds("interval", base.interval),
        jitter=jitter,
        fastinter=_optional_seconds(t, "fastinter", base.fastinter),
        downinter=_optional_seconds(t, "downinter", base.downinter),
        timeout=t.positive_seconds("timeout", base.timeout),
        rise=t.int("rise", base.rise, 1, 100),
        fall=t.int("fall", base.fall, 1, 100),
        flap_damping=t.bool("flap_damping", base.flap_damping),
        flap_half_life=t.positive_seconds("flap_half_life", base.flap_half_life),
        flap_suppress=t.number("flap_suppress", base.flap_suppress, 1.0, 1000.0),
        flap_reuse=t.number("flap_reuse", base.flap_reuse, 0.1, 1000.0),
        flap_max_hold=t.positive_seconds("flap_max_hold", base.flap_max_hold),
    )
    if spec.flap_reuse >= spec.flap_suppress:
        raise t.error("flap_reuse", f"{spec.flap_reuse:g} must be below flap_suppress ({spec.flap_suppress:g})")
    if spec.flap_reuse * 2 ** (spec.flap_max_hold / spec.flap_half_life) <= spec.flap_suppress:
        # The penalty is capped where it takes flap_max_hold to decay to reuse: below suppress, never held.
        raise t.error("flap_max_hold", f"{spec.flap_max_hold:g}s is too short to ever hold a server down "
                      f"(the penalty would never pass flap_suppress): at least flap_half_life x "
                      f"log2(flap_suppress / flap_reuse)")
    if not spec.path.startswith("/"):
        raise t.error("path", f"{spec.path!r} must start with '/'")
    if not _METHOD.fullmatch(spec.method):
        raise t.error("method", f"{spec.method!r} is not an HTTP method (upper case letters, e.g. GET, HEAD)")
    if spec.expect_body is not None and (spec.method == "HEAD" or not spec.expect_body):
        raise t.error("expect_body", "must be a non-empty string, and HEAD responses have no body")
    if not allow_servers:
        t.done()
    return spec


def _build_checker(root: _Table) -> CheckerConfig:
    c = root.table("checker", default_empty=False)
    router_path = c.path("router_config")
    heartbeat = c.positive_seconds("heartbeat", 5.0)
    init_state = c.str("init_state", "fully-up", INIT_STATES)
    c.done()
    try:
        router = load_router_config(router_path)
    except ConfigError as e:
        # The checker cannot run without the server list: report the router file's own error.
        raise ConfigError(root.file, "checker.router_config", f"cannot load: {e}") from None
    defaults = _check_spec(root.table("defaults"), CheckSpec())
    apps = root.table("app")
    by_name = {a.name: a for a in router.apps}
    per_app: dict[str, CheckSpec] = {}
    per_server: dict[str, CheckSpec] = {}
    for name in apps.data:
        if name not in by_name:
            raise apps.error(name, f"no app named {name!r} in {router_path}")
        at = apps.table(name)
        per_app[name] = _check_spec(at, defaults, allow_servers=True)
        # [app.NAME.servers."host:port"]: overrides for one server, on top of the app's.
        st = at.table("servers")
        at.done()
        servers = {s.address: s for s in by_name[name].servers}
        for text in st.data:
            try:
                address = Address.parse(text)
            except ValueError as e:
                raise st.error(text, str(e)) from None
            if address not in servers:
                have = ", ".join(str(a) for a in servers)
                raise st.error(text, f"app {name!r} has no server {text!r} (has: {have})")
            per_server[by_name[name].server_key(servers[address])] = _check_spec(st.table(text), per_app[name])
        st.done()
    apps.done()
    return CheckerConfig(path=root.file, router=router, heartbeat=heartbeat, defaults=defaults,
                         per_app=per_app, per_server=per_server, init_state=init_state)


def load_checker_config(path: str | Path) -> CheckerConfig:
    return _load(path, _build_checker)

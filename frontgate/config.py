"""Loading and validation of the three daemons' TOML files.

Every problem becomes one ConfigError naming the file, the key path and what is wrong, so that
`frontgate check` and a daemon at start print the same single line. Unknown keys are errors:
a typo must never be silently ignored. Relative paths resolve against the TOML file's directory,
so a config means the same thing whatever directory a daemon is started from.
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

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
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- mux-router.toml

@dataclass(frozen=True)
class Listener:
    name: str
    address: Address
    proxy_protocol: bool = False
    scheme: str = "http"


@dataclass(frozen=True)
class Timeouts:
    http_request: float = 10.0   # the whole request head must arrive within this
    client: float = 60.0         # idle client connection between requests
    connect: float = 5.0         # TCP connect to a backend server
    server: float = 60.0         # waiting for the backend's response head / data
    tunnel: float = 3600.0       # idle WebSocket tunnel


@dataclass(frozen=True)
class Server:
    address: Address
    weight: int = 1


@dataclass(frozen=True)
class App:
    name: str
    hosts: tuple[str, ...]
    servers: tuple[Server, ...]
    path_prefix: str = "/"
    balance: str = "roundrobin"
    retries: int = 2             # further servers tried when a connect fails

    def server_key(self, server: Server) -> str:
        """The key of this server in the health state file."""
        return f"{self.name}/{server.address}"


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


# --------------------------------------------------------------------------- tls-terminator.toml

@dataclass(frozen=True)
class CertificateEntry:
    cert: Path
    key: Path | None = None      # None: the key is in the cert PEM
    default: bool = False


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

    @property
    def default_certificate(self) -> CertificateEntry:
        return next((c for c in self.certificates if c.default), self.certificates[0])


# --------------------------------------------------------------------------- health-checker.toml

@dataclass(frozen=True)
class CheckSpec:
    type: str = "http"
    path: str = "/"
    host: str | None = None
    expect_status: tuple[int, int] = (200, 399)
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True)
class CheckerConfig:
    path: Path
    router: RouterConfig
    heartbeat: float
    defaults: CheckSpec
    per_app: Mapping[str, CheckSpec] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        # One truth: the router's config says where the state lives.
        return self.router.state_file

    def spec_for(self, app_name: str) -> CheckSpec:
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
            return Address.parse(value)
        except ValueError as e:
            raise self.error(name, str(e)) from None

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

def _host_pattern(t: _Table, key: str, i: int, value: str) -> str:
    """Exact host names or `*.suffix`; lower-cased, no port, no trailing dot."""
    host = value.strip().lower().rstrip(".")
    label_chars = set("abcdefghijklmnopqrstuvwxyz0123456789-.")
    body = host[2:] if host.startswith("*.") else host
    if not body or not set(body) <= label_chars or ".." in body or body.startswith("."):
        raise ConfigError(t.file, f"{t.key(key)}[{i}]",
                          f"{value!r} is not a host name or '*.suffix' pattern")
    return host


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

_SCHEMES = ("http", "https")
_REDIRECT_CODES = (301, 302, 303, 307, 308)


def _build_router(root: _Table) -> RouterConfig:
    r = root.table("router")
    workers = r.int("workers", 1, 1, 64)
    state_file = r.path("state_file", "state/health.json")
    stale = r.positive_seconds("state_stale_after", 15.0)
    trusted = _networks(r, "trusted_sources", ["127.0.0.1/32", "::1/128"], {})
    r.done()

    listen = root.table("listen", default_empty=False)
    listeners = []
    for name in listen.data:
        lt = listen.table(name)
        listeners.append(Listener(
            name=name,
            address=lt.address("address"),
            proxy_protocol=lt.bool("proxy_protocol", False),
            scheme=lt.str("scheme", "http", _SCHEMES),
        ))
        lt.done()
    if not listeners:
        raise ConfigError(root.file, "listen", "at least one [listen.NAME] table is needed")
    listen.done()
    _no_duplicate_addresses(root.file, "listen", [(f"listen.{l.name}.address", l.address) for l in listeners])

    tt = root.table("timeouts")
    defaults = Timeouts()
    timeouts = Timeouts(**{k: tt.positive_seconds(k, getattr(defaults, k)) for k in Timeouts.__dataclass_fields__})
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

    apps = []
    for at in root.tables("app"):
        name = at.str("name")
        if not name or "/" in name:
            raise at.error("name", f"{name!r}: app names are non-empty and have no '/'")
        hosts = tuple(_host_pattern(at, "hosts", i, h) for i, h in enumerate(at.str_list("hosts")))
        if not hosts:
            raise at.error("hosts", "at least one host name is needed")
        path_prefix = at.str("path_prefix", "/")
        if not path_prefix.startswith("/"):
            raise at.error("path_prefix", f"{path_prefix!r} must start with '/'")
        servers = []
        for i, s in enumerate(at.list("servers")):
            key = f"{at.key('servers')}[{i}]"
            if isinstance(s, str):
                s = {"address": s}
            st = _Table(s, at.file, key)
            servers.append(Server(address=st.address("address"), weight=st.int("weight", 1, 0, 256)))
            st.done()
        if not servers:
            raise at.error("servers", "at least one server is needed")
        _no_duplicate_addresses(at.file, at.key("servers"), [(f"{at.key('servers')}[{i}]", s.address)
                                                              for i, s in enumerate(servers)])
        app = App(name=name, hosts=hosts, path_prefix=path_prefix,
                  balance=at.str("balance", "roundrobin", ("roundrobin",)),
                  servers=tuple(servers), retries=at.int("retries", 2, 0, 16))
        at.done()
        if any(a.name == name for a in apps):
            raise at.error("name", f"duplicate app name {name!r}")
        apps.append(app)

    return RouterConfig(path=root.file, workers=workers, state_file=state_file, state_stale_after=stale,
                        trusted_sources=trusted, listeners=tuple(listeners), timeouts=timeouts,
                        redirects=tuple(redirects), apps=tuple(apps))


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
        workers=t.int("workers", 1, 1, 64),
        handshake_timeout=t.positive_seconds("handshake_timeout", 10.0),
        idle_timeout=t.positive_seconds("idle_timeout", 3600.0),
        max_connections=t.int("max_connections", 10000, 1, 1_000_000),
    )
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
    if not certs:
        raise ConfigError(root.file, "certificate", "at least one [[certificate]] is needed")
    if sum(c.default for c in certs) > 1:
        raise ConfigError(root.file, "certificate", "only one certificate can have default = true")
    return TerminatorConfig(path=root.file, certificates=tuple(certs), **cfg_args)


def load_terminator_config(path: str | Path, require_files: bool = True) -> TerminatorConfig:
    """`require_files=False` lets the dev-certificate script read the config before the files exist."""
    return _load(path, lambda root: _build_terminator(root, require_files))


# --------------------------------------------------------------------------- health-checker.toml

def _check_spec(t: _Table, base: CheckSpec) -> CheckSpec:
    expect = t.list("expect_status", list(base.expect_status))
    if (len(expect) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in expect)
            or not 100 <= expect[0] <= expect[1] <= 599):
        raise t.error("expect_status", f"expected [low, high] status codes within 100-599, got {expect!r}")
    spec = CheckSpec(
        type=t.str("type", base.type, ("tcp", "http")),
        path=t.str("path", base.path),
        host=t.str("host", base.host),
        expect_status=(expect[0], expect[1]),
        interval=t.positive_seconds("interval", base.interval),
        timeout=t.positive_seconds("timeout", base.timeout),
        rise=t.int("rise", base.rise, 1, 100),
        fall=t.int("fall", base.fall, 1, 100),
    )
    if not spec.path.startswith("/"):
        raise t.error("path", f"{spec.path!r} must start with '/'")
    t.done()
    return spec


def _build_checker(root: _Table) -> CheckerConfig:
    c = root.table("checker", default_empty=False)
    router_path = c.path("router_config")
    heartbeat = c.positive_seconds("heartbeat", 5.0)
    c.done()
    try:
        router = load_router_config(router_path)
    except ConfigError as e:
        # The checker cannot run without the server list: report the router file's own error.
        raise ConfigError(root.file, "checker.router_config", f"cannot load: {e}") from None
    defaults = _check_spec(root.table("defaults"), CheckSpec())
    apps = root.table("app")
    app_names = {a.name for a in router.apps}
    per_app = {}
    for name in apps.data:
        if name not in app_names:
            raise apps.error(name, f"no app named {name!r} in {router_path}")
        per_app[name] = _check_spec(apps.table(name), defaults)
    apps.done()
    return CheckerConfig(path=root.file, router=router, heartbeat=heartbeat, defaults=defaults, per_app=per_app)


def load_checker_config(path: str | Path) -> CheckerConfig:
    return _load(path, _build_checker)

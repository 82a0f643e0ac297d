"""mux-router.toml: listeners, timeouts, redirect rules, apps (frontgate.config.apps), [routes]
(frontgate.config.routes), [admin]."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from frontgate import client_auth, names
from frontgate.client_auth import ClientAuthRule
from frontgate.config import routes as routes_config
from frontgate.config.apps import (
    App,
    ErrorPage,
    _error_pages,
    no_duplicate_addresses,
    parse_app,
)
from frontgate.config.common import AdminConfig, admin_table, workers_key
from frontgate.config.routes import RoutesConfig
from frontgate.config.schema import (
    Address,
    ConfigError,
    Network,
    Table,
    host_pattern,
    load,
    networks,
)


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
    routes: RoutesConfig | None = None     # [routes]: the dynamic route table (frontgate/config/routes.py)
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


_SCHEMES = ("http", "https")


_REDIRECT_CODES = (301, 302, 303, 307, 308)


DEFAULT_ACCESS_LOG_FILE = "../logs/access.log"     # from configs/: the deploy's logs/


def _access_log_file(r: Table) -> Path | None:
    """`access_log_file`: the file the access log is appended to; "-" is stdout (None)."""
    if r.data.get("access_log_file") == "-":
        r.used.add("access_log_file")
        return None
    return r.path("access_log_file", None) or (r.file.parent / DEFAULT_ACCESS_LOG_FILE).resolve()


def _build_router(root: Table) -> RouterConfig:
    r = root.table("router")
    workers = workers_key(r)
    state_file = r.path("state_file", "state/health.json")
    stale = r.positive_seconds("state_stale_after", 15.0)
    trusted = networks(r, "trusted_sources", ["127.0.0.1/32", "::1/128"], {})
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
    admin = admin_table(root, Path(state_file).parent / "stats")

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
    no_duplicate_addresses(root.file, "listen", [(f"listen.{l.name}.address", l.address) for l in listeners])
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
            source_in=networks(rt, "source_in", [], aliases),
            source_not_in=networks(rt, "source_not_in", [], aliases),
            hosts=tuple(host_pattern(rt, "hosts", i, h) for i, h in enumerate(rt.str_list("hosts", []))),
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
        app = parse_app(at, aliases)
        name, default = app.name, app.default
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


def load_router_config(path: str | Path) -> RouterConfig:
    return load(path, _build_router)

"""health-checker.toml: how every server of the router's apps is checked."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from frontgate.config.router import RouterConfig, load_router_config
from frontgate.config.schema import Address, ConfigError, Table, load

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


def _optional_seconds(t: Table, name: str, default: float | None) -> float | None:
    if name not in t.data:
        t.used.add(name)
        return default
    return t.positive_seconds(name, 1.0)


def _check_spec(t: Table, base: CheckSpec, allow_servers: bool = False) -> CheckSpec:
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


def _build_checker(root: Table) -> CheckerConfig:
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
    return load(path, _build_checker)

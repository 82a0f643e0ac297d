"""Config validation: every error names the file, the key path and the problem, in one line."""
import ipaddress
import os
from pathlib import Path

import pytest

from frontgate.config import (NO_HEADER_RULES, Address, ConfigError, load_checker_config, load_router_config,
                              load_terminator_config)

ROUTER = """
[router]
state_file = "state/health.json"
trusted_sources = ["127.0.0.1/32"]
[listen.public]
address = "127.0.0.1:8080"
[listen.tls]
address = "127.0.0.1:8443"
proxy_protocol = true
scheme = "https"
[timeouts]
connect = 2
[[redirect]]
listener = "public"
source_not_in = ["trusted"]
to_scheme = "https"
code = 301
[[app]]
name = "maps"
hosts = ["Maps.Localhost."]
servers = ["127.0.0.1:3000", { address = "[::1]:3001", weight = 3 }]
[[app]]
name = "coltrane"
hosts = ["*.coltrane.localhost"]
path_prefix = "/api"
retries = 0
servers = ["127.0.0.1:8000"]
"""

CHECKER = """
[checker]
router_config = "mux-router.toml"
[defaults]
type = "http"
expect_status = [200, 299]
[app.maps]
type = "tcp"
interval = 0.5
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_router_config_parses_into_dataclasses(tmp_path):
    cfg = load_router_config(write(tmp_path, "mux-router.toml", ROUTER))
    assert cfg.state_file == tmp_path / "state" / "health.json"   # relative to the TOML's directory
    assert [l.name for l in cfg.listeners] == ["public", "tls"]
    assert cfg.listeners[1].proxy_protocol and cfg.listeners[1].scheme == "https"
    # The SNI/Host check is on by default where there is an SNI (PROXY listeners), off elsewhere.
    assert cfg.listeners[1].sni_host_check and not cfg.listeners[0].sni_host_check
    assert cfg.timeouts.connect == 2 and cfg.timeouts.http_request == 10
    rule = cfg.redirects[0]
    assert rule.listeners == ("public",) and rule.source_not_in == (ipaddress.ip_network("127.0.0.1/32"),)
    maps, coltrane = cfg.apps
    assert maps.hosts == ("maps.localhost",)
    assert maps.servers[1].address == Address(host="::1", port=3001) and maps.servers[1].weight == 3
    assert maps.server_key(maps.servers[1]) == "maps/[::1]:3001"
    assert coltrane.path_prefix == "/api" and coltrane.retries == 0


def test_checker_reads_servers_from_router_config(tmp_path):
    write(tmp_path, "mux-router.toml", ROUTER)
    cfg = load_checker_config(write(tmp_path, "health-checker.toml", CHECKER))
    assert [a.name for a in cfg.router.apps] == ["maps", "coltrane"]
    assert cfg.state_file == cfg.router.state_file
    assert cfg.spec_for("maps").type == "tcp" and cfg.spec_for("maps").interval == 0.5
    assert cfg.spec_for("maps").expect_status == ((200, 299),)       # inherited from [defaults]
    assert cfg.spec_for("coltrane").type == "http"


def test_terminator_config(tmp_path):
    (tmp_path / "a.pem").write_text("x")
    (tmp_path / "b.pem").write_text("x")
    cfg = load_terminator_config(write(tmp_path, "t.toml", """
[terminator]
listen = "0.0.0.0:443"
forward_to = "unix:/run/router.sock"
[[certificate]]
cert = "a.pem"
[[certificate]]
cert = "b.pem"
default = true
"""))
    assert cfg.forward_to.is_unix and str(cfg.forward_to) == "unix:/run/router.sock"
    assert cfg.default_certificate.cert == tmp_path / "b.pem"
    assert cfg.handshake_timeout == 10
    assert cfg.grace == 10


@pytest.mark.parametrize("text", ["127.0.0.1:80", "[::1]:443", "localhost:8000", "unix:/tmp/x.sock"])
def test_address_round_trip(text):
    assert str(Address.parse(text)) == text


@pytest.mark.parametrize("text, problem", [
    ("127.0.0.1", "expected 'host:port'"),
    ("127.0.0.1:0", "out of range"),
    ("127.0.0.1:70000", "out of range"),
    ("::1:80", "need brackets"),
    ("host:http", "not a number"),
    ("unix:", "path is empty"),
])
def test_bad_addresses(text, problem):
    with pytest.raises(ValueError, match=problem):
        Address.parse(text)


# (a replacement applied to ROUTER, the key path expected in the error, a fragment of the problem)
ROUTER_ERRORS = [
    (("[timeouts]\n", "[timeouts]\nbogus = 1\n"), "timeouts.bogus", "unknown key"),
    (("connect = 2", 'connect = "2"'), "timeouts.connect", "expected a number, got a string"),
    (("connect = 2", "connect = 0"), "timeouts.connect", "positive number of seconds"),
    (("127.0.0.1:8080", "127.0.0.1:80800"), "listen.public.address", "out of range"),
    (('scheme = "https"', 'scheme = "ftp"'), "listen.tls.scheme", "not one of"),
    (("proxy_protocol = true", 'proxy_protocol = "yes"'), "listen.tls.proxy_protocol", "true or false"),
    (('"127.0.0.1/32"]', '"127.0.0.1/33"]'), "router.trusted_sources[0]", "not a CIDR"),
    (("code = 301", "code = 200"), "redirect[0].code", "not a redirect code"),
    (('listener = "public"', 'listener = "nope"'), "redirect[0].listener", "no listener named 'nope'"),
    (('to_scheme = "https"', ""), "redirect[0]", "exactly one of"),
    (('name = "coltrane"', 'name = "maps"'), "app[1].name", "duplicate app name"),
    (('name = "coltrane"', 'name = "route:coltrane.localhost"'), "app[1].name", "are the dynamic routes'"),
    (('name = "coltrane"', 'name = "coltrane"\nwebsocket = "no"'), "app[1].websocket", "true or false"),
    (('"*.coltrane.localhost"', '"bad host!"'), "app[1].hosts[0]", "not a host name"),
    (('path_prefix = "/api"', 'path_prefix = "api"'), "app[1].path_prefix", "must start with '/'"),
    (('retries = 0', 'retries = -1'), "app[1].retries", "out of range"),
    (('servers = ["127.0.0.1:8000"]', "servers = []"), "app[1].servers", "at least one server"),
    (('servers = ["127.0.0.1:8000"]', 'servers = ["127.0.0.1:8000", "127.0.0.1:8000"]'),
     "app[1].servers[1]", "already used"),
    (("weight = 3", "weight = 3, color = 1"), "app[0].servers[1].color", "unknown key"),
    (("weight = 3", "weight = true"), "app[0].servers[1].weight", "expected an integer, got a boolean"),
    (("[listen.tls]\n", "[listen.tls]\nport = 1\n"), "listen.tls.port", "unknown key"),
    (("[listen.tls]\n", '[listen.tls]\nsni_host_check = "yes"\n'), "listen.tls.sni_host_check", "true or false"),
    (("[listen.public]\n", "[listen.public]\nsni_host_check = true\n"), "listen.public.sni_host_check",
     "needs proxy_protocol = true"),
    (("retries = 0", 'request_headers = { set = { "x-client-cert-subject" = "a" } }'),
     "app[1].request_headers.set.x-client-cert-subject", "only the router sets"),
    (("retries = 0", 'request_headers = { delete = ["X-Client-Cert-Subject"] }'),
     "app[1].request_headers.delete[0]", "may delete"),
    (("connect = 2", "keep_alive = -1"), "timeouts.keep_alive", "positive number of seconds"),
    (("connect = 2", "queue = 0"), "timeouts.queue", "positive number of seconds"),
    (('trusted_sources = ["127.0.0.1/32"]', 'access_log_format = "clf"'), "router.access_log_format", "not one of"),
    (('trusted_sources = ["127.0.0.1/32"]', 'access_log = "none"'), "router.access_log", "not one of"),
    (('trusted_sources = ["127.0.0.1/32"]', 'forwarded_for = "keep"'), "router.forwarded_for", "not one of"),
    (('trusted_sources = ["127.0.0.1/32"]', 'retry_after = -1'), "router.retry_after", "out of range"),
    (('trusted_sources = ["127.0.0.1/32"]', 'grace = 0'), "router.grace", "positive number of seconds"),
    (('trusted_sources = ["127.0.0.1/32"]', 'grace = "10s"'), "router.grace", "expected a number, got a string"),
    (("retries = 0", 'balance = "random"'), "app[1].balance", "not one of"),
    (("retries = 0", 'host_regex = "(("'), "app[1].host_regex", "not a valid regular expression"),
    (("retries = 0", 'path_regex = "[a"'), "app[1].path_regex", "not a valid regular expression"),
    (("retries = 0", 'header = { regex = "x" }'), "app[1].header.name", "required key is missing"),
    (("retries = 0", 'header = { name = "X Y", regex = "x" }'), "app[1].header.name", "not a header name"),
    (('hosts = ["*.coltrane.localhost"]', "hosts = []"), "app[1].hosts", "or default = true"),
    (("retries = 0", "max_body = -1"), "app[1].max_body", "out of range"),
    (("weight = 3", "weight = 3, maxconn = -1"), "app[0].servers[1].maxconn", "out of range"),
    (("retries = 0", 'acl = [{ allow = ["10.0.0.0/33"] }]'), "app[1].acl[0].allow[0]", "not a CIDR"),
    (("retries = 0", 'acl = [{ path_prefix = "x" }]'), "app[1].acl[0].path_prefix", "must start with '/'"),
    (("retries = 0", 'request_headers = { set = { "Content-Length" = "1" } }'),
     "app[1].request_headers.set.Content-Length", "cannot be changed"),
    (("retries = 0", 'response_headers = { delete = ["Transfer-Encoding"] }'),
     "app[1].response_headers.delete[0]", "may delete"),
    (("retries = 0", 'request_headers = { add = { "X-A" = "a\\nb" } }'),
     "app[1].request_headers.add.X-A", "printable ASCII"),
    (("retries = 0", 'error_pages = { 503 = "missing.html" }'), "app[1].error_pages.503", "cannot read"),
    (("retries = 0", 'error_pages = { 200 = "missing.html" }'), "app[1].error_pages.200", "status code 400-599"),
]


def test_sni_host_check_can_be_turned_off(tmp_path):
    text = ROUTER.replace("[listen.tls]\n", "[listen.tls]\nsni_host_check = false\n", 1)
    text = text.replace("[listen.public]\n", "[listen.public]\nsni_host_check = false\n", 1)
    cfg = load_router_config(write(tmp_path, "mux-router.toml", text))
    assert not any(l.sni_host_check for l in cfg.listeners)


@pytest.mark.parametrize("replace, key, problem", ROUTER_ERRORS, ids=[k for _, k, _ in ROUTER_ERRORS])
def test_router_errors_name_file_key_and_problem(tmp_path, replace, key, problem):
    old, new = replace
    assert old in ROUTER
    path = write(tmp_path, "mux-router.toml", ROUTER.replace(old, new, 1))
    with pytest.raises(ConfigError) as exc:
        load_router_config(path)
    e = exc.value
    assert (e.file, e.key) == (str(path.absolute()), key) and problem in e.problem
    assert "\n" not in str(e) and str(e).startswith(f"{path.absolute()}: {key}: ")


def test_unix_listeners_resolve_from_the_toml_and_several_workers_share_only_one(tmp_path):
    both_unix = ROUTER.replace('address = "127.0.0.1:8080"', 'address = "unix:run/public.sock"').replace(
        'address = "127.0.0.1:8443"', 'address = "unix:/run/fg/router.sock"')
    cfg = load_router_config(write(tmp_path, "mux-router.toml", both_unix))
    # Relative to the TOML file's directory, like every other path in it; absolute ones stay.
    assert [l.address.path for l in cfg.listeners] == [str(tmp_path / "run" / "public.sock"), "/run/fg/router.sock"]
    # Several workers get one socket from supervisord (fcgi-program): a second unix listener is an error.
    path = write(tmp_path, "mux-router.toml", both_unix.replace("[router]\n", "[router]\nworkers = 2\n"))
    with pytest.raises(ConfigError) as exc:
        load_router_config(path)
    assert exc.value.key == "listen.tls.address"
    assert "with workers = 2 only one listener can be a unix socket (listen.public is one)" in exc.value.problem
    one_unix = ROUTER.replace("[router]\n", "[router]\nworkers = 2\n").replace(
        'address = "127.0.0.1:8443"', 'address = "unix:/run/fg/router.sock"')
    assert load_router_config(write(tmp_path, "mux-router.toml", one_unix)).workers == 2


def test_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "mux-router.toml", "[router\nworkers = 1\n")
    with pytest.raises(ConfigError, match=r"TOML syntax error: .*line 1"):
        load_router_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_router_config(tmp_path / "nope.toml")


def test_missing_certificate_file(tmp_path):
    path = write(tmp_path, "t.toml", '[terminator]\nlisten = "0.0.0.0:443"\nforward_to = "127.0.0.1:1"\n'
                                     '[[certificate]]\ncert = "missing.pem"\n')
    with pytest.raises(ConfigError) as exc:
        load_terminator_config(path)
    assert exc.value.key == "certificate[0].cert" and "not found" in exc.value.problem
    # The dev-certificate script reads the same file before the certificate exists.
    assert load_terminator_config(path, require_files=False).certificates[0].cert == tmp_path / "missing.pem"


def test_checker_errors(tmp_path):
    write(tmp_path, "mux-router.toml", ROUTER)
    for text, key, problem in [
        (CHECKER.replace("[app.maps]", "[app.nope]"), "app.nope", "no app named 'nope'"),
        (CHECKER.replace("[200, 299]", "[299]"), "defaults.expect_status", "[low, high]"),
        (CHECKER.replace('type = "tcp"', 'type = "icmp"'), "app.maps.type", "not one of"),
        (CHECKER.replace('"mux-router.toml"', '"other.toml"'), "checker.router_config", "file not found"),
    ]:
        path = write(tmp_path, "health-checker.toml", text)
        with pytest.raises(ConfigError) as exc:
            load_checker_config(path)
        assert exc.value.key == key and problem in exc.value.problem, str(exc.value)


def test_shipped_configs_are_valid():
    configs = Path(__file__).resolve().parents[2] / "configs"
    router = load_router_config(configs / "mux-router.toml")
    assert {a.name for a in router.apps} == {"maps", "coltrane"}
    load_terminator_config(configs / "tls-terminator.toml", require_files=False)


def test_router_extended_keys(tmp_path):
    (tmp_path / "503.html").write_text("<h1>later</h1>")
    text = ROUTER.replace('trusted_sources = ["127.0.0.1/32"]', 'trusted_sources = ["127.0.0.1/32"]\n'
                          'access_log = "errors"\naccess_log_format = "json"\nforwarded_for = "replace"\nforwarded = true\nretry_after = 30\ngrace = 2.5')
    text = text.replace("connect = 2", "connect = 2\nkeep_alive = 3\nqueue = 0.5")
    text += """
[error_pages]
503 = "503.html"
[[app]]
name = "rich"
host_regex = "tiles[0-9]+\\\\.maps\\\\.localhost"
path_regex = "\\\\.png$"
header = { name = "X-Env", regex = "^beta$" }
default = true
balance = "source"
redispatch = false
passive_fall = 5
max_body = 1048576
servers = [{ address = "127.0.0.1:9000", maxconn = 10 }]
acl = [{ path_prefix = "/admin", allow = ["trusted"] }, { deny = ["192.0.2.0/24"] }]
request_headers = { set = { X-App = "rich" }, add = { X-Tag = "a" }, delete = ["X-Debug"] }
response_headers = { delete = ["Server"] }
error_pages = { 503 = "503.html" }
"""
    cfg = load_router_config(write(tmp_path, "mux-router.toml", text))
    assert (cfg.access_log, cfg.access_log_format, cfg.forwarded_for, cfg.forwarded, cfg.retry_after) == (
        "errors", "json", "replace", True, 30)
    assert cfg.grace == 2.5
    assert (cfg.timeouts.keep_alive, cfg.timeouts.queue) == (3, 0.5)
    assert cfg.error_pages[503].body == b"<h1>later</h1>" and cfg.error_pages[503].content_type.startswith("text/html")
    rich = cfg.apps[-1]
    assert rich.hosts == () and rich.host_regex.fullmatch("tiles1.maps.localhost")
    assert rich.path_regex.search("/a.png") and rich.header.name == "x-env" and rich.default
    assert (rich.balance, rich.redispatch, rich.passive_fall, rich.max_body) == ("source", False, 5, 1048576)
    assert rich.servers[0].maxconn == 10
    assert rich.acls[0].allow == (ipaddress.ip_network("127.0.0.1/32"),) and rich.acls[1].path_prefix == "/"
    assert rich.request_headers.set == (("X-App", "rich"),) and rich.request_headers.delete == ("x-debug",)
    assert rich.response_headers.delete == ("server",) and 503 in rich.error_pages
    maps = cfg.apps[0]
    assert (maps.balance, maps.redispatch, maps.passive_fall, maps.max_body, maps.default) == ("roundrobin", True, 3, 0, False)
    # The router tests these per request by identity, and reads fields for routing only when asked.
    assert maps.request_headers is NO_HEADER_RULES and maps.response_headers is NO_HEADER_RULES
    assert rich.request_headers is not NO_HEADER_RULES and cfg.routes_by_header
    assert not load_router_config(write(tmp_path, "plain.toml", ROUTER)).routes_by_header
    empty = text.replace('response_headers = { delete = ["Server"] }', "response_headers = { delete = [] }")
    assert load_router_config(write(tmp_path, "empty.toml", empty)).apps[-1].response_headers is NO_HEADER_RULES


def test_only_one_default_app(tmp_path):
    text = ROUTER.replace("retries = 0", "retries = 0\ndefault = true").replace(
        'hosts = ["Maps.Localhost."]', 'hosts = ["Maps.Localhost."]\ndefault = true')
    with pytest.raises(ConfigError) as exc:
        load_router_config(write(tmp_path, "mux-router.toml", text))
    assert exc.value.key == "app[1].default" and "only one" in exc.value.problem


@pytest.mark.parametrize("line, workers", [("", 1), ("workers = 3", 3), ('workers = "auto"', None)])
def test_workers_is_a_number_or_auto_for_the_router_and_the_terminator(tmp_path, line, workers):
    expected = workers or len(os.sched_getaffinity(0))
    router = load_router_config(write(tmp_path, "mux-router.toml", ROUTER.replace("[router]\n", f"[router]\n{line}\n")))
    assert router.workers == expected
    (tmp_path / "a.pem").write_text("x")
    terminator = write(tmp_path, "tls-terminator.toml", f'[terminator]\nlisten = "127.0.0.1:443"\n'
                       f'forward_to = "127.0.0.1:8443"\n{line}\n[[certificate]]\ncert = "a.pem"\n')
    assert load_terminator_config(terminator).workers == expected


@pytest.mark.parametrize("value, problem", [('"all"', "'all': expected a number of processes or \"auto\""),
                                            ("0", "out of range (1-64)"), ("true", "expected an integer")])
def test_workers_errors_name_file_and_key(tmp_path, value, problem):
    path = write(tmp_path, "mux-router.toml", ROUTER.replace("[router]\n", f"[router]\nworkers = {value}\n"))
    with pytest.raises(ConfigError) as exc:
        load_router_config(path)
    assert (exc.value.file, exc.value.key) == (str(path), "router.workers") and problem in exc.value.problem
    path = write(tmp_path, "tls-terminator.toml", f'[terminator]\nlisten = "127.0.0.1:443"\n'
                 f'forward_to = "127.0.0.1:8443"\nworkers = {value}\n')
    with pytest.raises(ConfigError) as exc:
        load_terminator_config(path, require_files=False)
    assert (exc.value.file, exc.value.key) == (str(path), "terminator.workers") and problem in exc.value.problem


@pytest.mark.parametrize("line, expected", [
    ("", "../logs/access.log"),                            # the deploy's logs/, next to configs/
    ('access_log_file = "access.log"', "access.log"),      # relative to the TOML's directory
    ('access_log_file = "/var/log/fg/access.log"', "/var/log/fg/access.log"),
    ('access_log_file = "-"', None),                       # stdout
])
def test_access_log_file(tmp_path, line, expected):
    (tmp_path / "configs").mkdir()
    cfg = load_router_config(write(tmp_path / "configs", "mux-router.toml",
                                   ROUTER.replace("[router]\n", f"[router]\n{line}\n")))
    assert cfg.access_log_file == (None if expected is None else (tmp_path / "configs" / expected).resolve())


@pytest.mark.parametrize("value, problem", [('""', "path is empty"), ("1", "expected a string, got an integer")])
def test_access_log_file_errors(tmp_path, value, problem):
    path = write(tmp_path, "mux-router.toml", ROUTER.replace("[router]\n", f"[router]\naccess_log_file = {value}\n"))
    with pytest.raises(ConfigError) as exc:
        load_router_config(path)
    assert exc.value.key == "router.access_log_file" and problem in exc.value.problem


def test_routes_defaults_are_paths_beside_the_config(tmp_path):
    """[routes] file and [routes.self_service] socket default to state/ and run/ beside configs/,
    as Paths (route-broker did `.parent` on the default)."""
    (tmp_path / "configs").mkdir()
    text = ROUTER + '\n[routes]\nstore = "redis://127.0.0.1:6379/0"\n[routes.self_service]\nuser_domains = ["{user}.x.net"]\n'
    cfg = load_router_config(write(tmp_path / "configs", "mux-router.toml", text)).routes
    assert cfg.self_service.socket == (tmp_path / "run" / "routes.sock").resolve()
    assert cfg.shared and cfg.file.name == "routes.json"

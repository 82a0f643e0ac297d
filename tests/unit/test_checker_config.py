"""health-checker.toml: per-app and per-server overrides and the richer check keys."""
from pathlib import Path

import pytest

from frontgate.config import ConfigError, load_checker_config

ROUTER = """
[router]
[listen.public]
address = "127.0.0.1:8080"
[[app]]
name = "maps"
hosts = ["maps.localhost"]
servers = ["127.0.0.1:3000", "[::1]:3001"]
[[app]]
name = "coltrane"
hosts = ["coltrane.localhost"]
servers = ["127.0.0.1:8000"]
"""

CHECKER = """
[checker]
router_config = "mux-router.toml"
[defaults]
type = "http"
method = "HEAD"
expect_status = "200-299,304"
interval = 2
fastinter = 0.5
downinter = 10
jitter = 0.2
[app.maps]
method = "GET"
expect_body = "ok"
[app.maps.servers."[::1]:3001"]
type = "tls"
tls_verify = true
timeout = 3
"""


def load(tmp_path: Path, checker: str = CHECKER):
    (tmp_path / "mux-router.toml").write_text(ROUTER)
    (tmp_path / "health-checker.toml").write_text(checker)
    return load_checker_config(tmp_path / "health-checker.toml")


def test_server_overrides_app_overrides_defaults(tmp_path):
    cfg = load(tmp_path)
    coltrane = cfg.spec_for("coltrane", "coltrane/127.0.0.1:8000")
    assert coltrane == cfg.defaults
    assert (coltrane.method, coltrane.expect_status, coltrane.fastinter, coltrane.downinter, coltrane.jitter) == (
        "HEAD", ((200, 299), (304, 304)), 0.5, 10, 0.2)
    maps = cfg.spec_for("maps", "maps/127.0.0.1:3000")
    assert (maps.type, maps.method, maps.expect_body, maps.interval) == ("http", "GET", "ok", 2)
    tls = cfg.spec_for("maps", "maps/[::1]:3001")
    assert (tls.type, tls.tls_verify, tls.timeout, tls.method, tls.expect_body) == ("tls", True, 3, "GET", "ok")
    assert cfg.spec_for("maps") == maps


def test_unset_fastinter_and_downinter_follow_the_interval(tmp_path):
    cfg = load(tmp_path, "[checker]\nrouter_config = 'mux-router.toml'\n")
    assert cfg.defaults.fastinter is None and cfg.defaults.downinter is None and cfg.defaults.jitter == 0.1


@pytest.mark.parametrize("change, key, problem", [
    (('[app.maps.servers."[::1]:3001"]', '[app.maps.servers."127.0.0.1:9999"]'),
     'app.maps.servers.127.0.0.1:9999', "app 'maps' has no server '127.0.0.1:9999'"),
    (('[app.maps.servers."[::1]:3001"]', '[app.maps.servers."nope"]'), "app.maps.servers.nope", "host:port"),
    (('tls_verify = true', 'tls_verify = true\nbogus = 1'), 'app.maps.servers.[::1]:3001.bogus', "unknown key"),
    (('method = "GET"', 'method = "get it"'), "app.maps.method", "not an HTTP method"),
    (('method = "GET"', 'method = "HEAD"'), "app.maps.expect_body", "HEAD"),
    (('"200-299,304"', '"2xx"'), "defaults.expect_status", "'2xx'"),
    (('jitter = 0.2', 'jitter = 0.9'), "defaults.jitter", "out of range"),
    (('fastinter = 0.5', 'fastinter = 0'), "defaults.fastinter", "positive"),
    (('type = "http"', 'type = "icmp"'), "defaults.type", "not one of"),
])
def test_errors_name_the_key(tmp_path, change, key, problem):
    assert change[0] in CHECKER
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, CHECKER.replace(*change))
    assert exc.value.key == key and problem in exc.value.problem, str(exc.value)


def test_shipped_checker_config_is_valid():
    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_checker_config(configs / "health-checker.toml")
    assert cfg.defaults.type == "http"


@pytest.mark.parametrize("line, expected", [("", "fully-up"), ('init_state = "fully-up"', "fully-up"),
                                            ('init_state = "provisional"', "provisional")])
def test_init_state(tmp_path, line, expected):
    assert load(tmp_path, f"[checker]\nrouter_config = 'mux-router.toml'\n{line}\n").init_state == expected


@pytest.mark.parametrize("line, problem", [('init_state = "down"', "'down' is not one of 'fully-up', 'provisional'"),
                                           ("init_state = true", "expected a string, got a boolean")])
def test_init_state_errors_name_file_and_key(tmp_path, line, problem):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, f"[checker]\nrouter_config = 'mux-router.toml'\n{line}\n")
    assert exc.value.file.endswith("health-checker.toml") and exc.value.key == "checker.init_state"
    assert problem in exc.value.problem, str(exc.value)

"""cert-manager.toml: defaults, names (exact only, from the list and the router's acme apps), and
every error naming file, key and problem."""
from __future__ import annotations

import pytest

from frontgate.config.cert_manager import LETS_ENCRYPT_STAGING, load_cert_manager_config
from frontgate.config import ConfigError

ROUTER = """
[router]
acme_challenge_dir = "{challenges}"
[listen.public]
address = "127.0.0.1:8080"
[[app]]
name = "shop"
hosts = ["Shop.Example.com", "*.shop.example.com", "www.shop.example.com"]
servers = ["127.0.0.1:9000"]
acme = true
[[app]]
name = "other"
hosts = ["other.example.com"]
servers = ["127.0.0.1:9001"]
"""


def load(tmp_path, body: str, router: str | None = None):
    if router is not None:
        (tmp_path / "mux-router.toml").write_text(router)
    path = tmp_path / "cert-manager.toml"
    path.write_text(body)
    return load_cert_manager_config(path)


def test_defaults_idle_on_staging(tmp_path):
    cfg = load(tmp_path, "[cert_manager]\n")
    assert cfg.names == () and cfg.directory_url == LETS_ENCRYPT_STAGING and cfg.admin is None
    assert cfg.key_type == "ec-p256"
    assert cfg.certs_dir == (tmp_path / "../certs/live").resolve()
    assert cfg.challenge_dir == (tmp_path / "../state/acme-challenges").resolve()


def test_names_from_list_and_acme_apps(tmp_path):
    router = ROUTER.format(challenges="../state/acme-challenges")
    cfg = load(tmp_path, '[cert_manager]\nnames = ["B.example.org.", "shop.example.com"]\n'
                         'router_config = "mux-router.toml"\n', router)
    # Normalised, deduplicated; the app's wildcard and the unmarked app's host are not taken.
    assert cfg.names == ("b.example.org", "shop.example.com", "www.shop.example.com")


def test_shipped_config_is_valid_and_idle():
    from tests.helpers import REPO
    cfg = load_cert_manager_config(REPO / "configs" / "cert-manager.toml")
    assert cfg.names == () and cfg.router_config is None


@pytest.mark.parametrize("body, key, problem", [
    ('names = ["*.example.com"]', "cert_manager.names[0]", "wildcard"),
    ('names = ["ok.example", "10.0.0.1"]', "cert_manager.names[1]", "IP address"),
    ('names = ["bad_name.example"]', "cert_manager.names[0]", "not a host name"),
    ('directory_url = "http://ca.example/dir"', "cert_manager.directory_url", "https://"),
    ('contact = ["ops@example.com"]', "cert_manager.contact[0]", "mailto:"),
    ('key_type = "dsa"', "cert_manager.key_type", "is not one of"),
    ('retry_min = 0', "cert_manager.retry_min", "positive"),
    ('retry_min = 100\nretry_max = 10', "cert_manager.retry_max", "below retry_min"),
    ('ca_bundle = "missing.pem"', "cert_manager.ca_bundle", "no such file"),
    ('nmaes = []', "cert_manager.nmaes", "unknown key"),
    ('router_config = "absent.toml"', "cert_manager.router_config", "cannot load"),
])
def test_errors_name_the_key(tmp_path, body, key, problem):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"[cert_manager]\n{body}\n")
    assert e.value.key == key and problem in e.value.problem, str(e.value)


def test_challenge_dir_must_be_the_routers(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, '[cert_manager]\nrouter_config = "mux-router.toml"\nchallenge_dir = "elsewhere"\n',
             ROUTER.format(challenges="../state/acme-challenges"))
    assert e.value.key == "cert_manager.challenge_dir"
    router_without = ROUTER.replace('acme_challenge_dir = "{challenges}"\n', "")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, '[cert_manager]\nrouter_config = "mux-router.toml"\n', router_without)
    assert e.value.key == "cert_manager.router_config" and "acme_challenge_dir" in e.value.problem


def test_admin_must_be_loopback(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, '[cert_manager]\n[admin]\naddress = "0.0.0.0:8406"\n')
    assert e.value.key == "admin.address"

"""tls-terminator.toml: the certificate directory, [tls], [[client_auth]], [[passthrough]], privileges."""
from __future__ import annotations

from pathlib import Path

import pytest

from frontgate.config import Address, ConfigError, TlsPolicy, load_terminator_config

HEAD = '[terminator]\nlisten = "127.0.0.1:443"\nforward_to = "127.0.0.1:8443"\n'


def load(tmp_path: Path, text: str):
    path = tmp_path / "t.toml"
    path.write_text(text)
    return load_terminator_config(path)


def test_defaults(tmp_path):
    (tmp_path / "a.pem").write_text("x")
    cfg = load(tmp_path, HEAD + '[[certificate]]\ncert = "a.pem"\n')
    assert cfg.tls == TlsPolicy() and cfg.tls.min_version == "TLSv1.2" and cfg.tls.session_tickets
    assert cfg.certs_dir is None and cfg.certs_poll_interval == 5 and not cfg.allow_loose_key_permissions
    assert (cfg.user, cfg.group, cfg.chroot, cfg.client_auth, cfg.passthrough) == (None, None, None, (), ())
    assert cfg.grace == 10 and cfg.tls.alpn == ("h2", "http/1.1")


# Client certificates are declared once, on the router's apps; the terminator follows them.
ROUTER_WITH_CLIENT_CERTS = '''[listen.main]
address = "127.0.0.1:8443"
proxy_protocol = true
[[app]]
name = "secure"
hosts = ["Secure.Test", "*.secure.test"]
client_ca = "clients.pem"
servers = ["127.0.0.1:1"]
[[app]]
name = "opt"
hosts = ["opt.test"]
client_ca = "opt.pem"
client_cert = "optional"
servers = ["127.0.0.1:2"]
'''


def test_everything(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "clients.pem").write_text("x")
    (tmp_path / "opt.pem").write_text("x")
    (tmp_path / "router.toml").write_text(ROUTER_WITH_CLIENT_CERTS)
    cfg = load(tmp_path, HEAD + '''certs_dir = "certs"
router_config = "router.toml"
certs_poll_interval = 0
grace = 3
allow_loose_key_permissions = true
user = "nobody"
group = "nogroup"
chroot = "/var/empty"
alpn = ["http/1.1"]
[tls]
min_version = "TLSv1.3"
ciphers = "ECDHE+AESGCM"
ciphersuites = "TLS_AES_256_GCM_SHA384"
prefer_server_ciphers = "always"
session_tickets = false
session_timeout = 600
groups = ["X25519", "secp384r1"]
[[passthrough]]
sni = "*.pass.example"
backend = "127.0.0.1:9443"
proxy_protocol = true
''')
    assert cfg.certs_dir == tmp_path / "certs" and cfg.certificates == () and cfg.default_certificate is None
    assert cfg.certs_poll_interval == 0 and cfg.allow_loose_key_permissions and cfg.grace == 3
    assert (cfg.user, cfg.group, cfg.chroot) == ("nobody", "nogroup", Path("/var/empty"))
    assert cfg.tls == TlsPolicy(min_version="TLSv1.3", max_version="TLSv1.3", ciphers="ECDHE+AESGCM",
                                ciphersuites="TLS_AES_256_GCM_SHA384", prefer_server_ciphers="always",
                                session_tickets=False, session_timeout=600, groups=("X25519", "secp384r1"),
                                alpn=("http/1.1",))
    assert [(r.sni, r.verify, r.ca) for r in cfg.client_auth] == [
        (("secure.test", "*.secure.test"), "required", tmp_path / "clients.pem"),
        (("opt.test",), "optional", tmp_path / "opt.pem")]
    assert cfg.router_config == tmp_path / "router.toml"
    route = cfg.passthrough[0]
    assert route.sni == ("*.pass.example",) and route.backend == Address.parse("127.0.0.1:9443") and route.proxy_protocol


@pytest.mark.parametrize("body,key,problem", [
    ("", "certificate", "at least one [[certificate]] or terminator.certs_dir is needed"),
    ('certs_dir = "nowhere"\n', "terminator.certs_dir", "is not a directory"),
    ('certs_dir = "."\nuser = "no-such-user-here"\n', "terminator.user", "no user named"),
    ('certs_dir = "."\ngroup = "no-such-group-here"\n', "terminator.group", "no group named"),
    ('certs_dir = "."\ncerts_poll_interval = -1\n', "terminator.certs_poll_interval", "out of range"),
    ('certs_dir = "."\ngrace = -1\n', "terminator.grace", "positive number of seconds"),
    ('certs_dir = "."\ngrace = true\n', "terminator.grace", "expected a number, got a boolean"),
    ('certs_dir = "."\nalpn = []\n', "terminator.alpn", "at least one"),
    ('certs_dir = "."\nalpn = "h2"\n', "terminator.alpn", "expected an array"),
    ('certs_dir = "."\nalpn = ["h2", "spdy/3"]\n', "terminator.alpn", "'spdy/3' is not a protocol the router speaks"),
    ('certs_dir = "."\nalpn = ["h2", "h2"]\n', "terminator.alpn", "named twice"),
    ('certs_dir = "."\n[tls]\nmin_version = "SSLv3"\n', "tls.min_version", "is not one of"),
    ('certs_dir = "."\n[tls]\nmin_version = "TLSv1.3"\nmax_version = "TLSv1.2"\n', "tls.min_version", "above"),
    ('certs_dir = "."\n[tls]\nsesion_tickets = false\n', "tls.sesion_tickets", "unknown key"),
    ('certs_dir = "."\n[tls]\ngroups = "X25519"\n', "tls.groups", "expected an array, got a string"),
    ('certs_dir = "."\n[tls]\ngroups = []\n', "tls.groups", "an empty list leaves no key exchange"),
    ('certs_dir = "."\n[tls]\ngroups = ["X25519", 1]\n', "tls.groups[1]", "expected a string"),
    ('certs_dir = "."\n[tls]\ngroups = ["X25519:X448"]\n', "tls.groups[0]", "is not a group name"),
    ('certs_dir = "."\n[tls]\ngroups = ["X25519", "x25519"]\n', "tls.groups", "listed twice"),
    ('certs_dir = "."\n[[passthrough]]\nbackend = "127.0.0.1:1"\n', "passthrough[0].sni", "required"),
    ('certs_dir = "."\n[[passthrough]]\nsni = "a b"\nbackend = "127.0.0.1:1"\n', "passthrough[0].sni[0]",
     "not a host name"),
    ('certs_dir = "."\n[[passthrough]]\nsni = "a.test"\n', "passthrough[0].backend", "required key is missing"),
])
def test_errors(tmp_path, body, key, problem):
    terminator, _, tables = body.partition("[")
    text = HEAD + terminator + ("[" + tables if tables else "")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    assert e.value.key == key and problem in e.value.problem, str(e.value)

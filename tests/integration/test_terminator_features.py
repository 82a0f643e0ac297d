"""tls-terminator as a real subprocess: the certificate directory and its hot reload, ECDSA and RSA
side by side, session resumption, privilege drop, key permissions, client certificates (mTLS) with
the subject in the PROXY header, SNI passthrough, OCSP stapling, and an sslyze scan."""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trustme

from frontgate.proxy_protocol import ProxyHeader, decode
from tests.certmaker import DAY, client_hello, make_leaf
from tests.helpers import BIN, free_port, sslyze_binary, start_daemon, stop_daemon, wait_until
from tests.integration.test_terminator import RouterStub, Terminator, echo_once
from tests.pipeline import RecordingBackend


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def router():
    stub = RouterStub()
    yield stub
    stub.stop()


def client_ctx(ca: trustme.CA, **kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False       # which certificate was served is checked by DER
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def served(port: int, ctx: ssl.SSLContext, name: str | None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            return s.getpeercert(binary_form=True)


def s_client(port: int, *args: str) -> str:
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                       input="", capture_output=True, text=True, timeout=20)
    return r.stdout + r.stderr


def start(d: Path, router: RouterStub, tables: str = "", **options) -> Terminator:
    """A terminator in `d` (relative paths resolve there) in front of `router`; `tables` are the
    TOML tables after [terminator], `options` its keys."""
    return Terminator(d, tables, f"127.0.0.1:{router.port}", **options)


# --------------------------------------------------------------------------- certs_dir and choice

@pytest.fixture
def store_dir(ca, tmp_path):
    """A certs_dir with rival certificates for a.test, a CN-only one, an expired one, a broken file."""
    d = tmp_path / "certs"
    d.mkdir()
    leaves = {
        "a": make_leaf(ca, "a.test", "*.wild.test", valid_to=60 * DAY),
        "a-rsa": make_leaf(ca, "a.test", key_type="rsa"),
        "a-old": make_leaf(ca, "a.test", valid_to=20 * DAY),                       # valid, expires sooner
        "a-future": make_leaf(ca, "a.test", valid_from=DAY, valid_to=90 * DAY),     # not valid yet
        "cn": make_leaf(ca, cn="cn.test"),
        "expired": make_leaf(ca, "expired.test", valid_from=-30 * DAY, valid_to=-DAY),
        "0-default": make_leaf(ca, "default.test"),                                 # first by name
    }
    for label, leaf in leaves.items():
        if label == "a-rsa":
            leaf.write_pair(d / "a-rsa.crt", d / "a-rsa.key")
        else:
            leaf.write_pem(d / f"{label}.pem")
    (d / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (d / ".editor-swap.pem").write_text("ignored")
    (d / "README").write_text("ignored")
    return d, leaves


def test_certs_dir_names_validity_and_key_types(ca, router, store_dir, tmp_path):
    d, leaves = store_dir
    t = start(tmp_path, router, certs_dir='"certs"')
    try:
        ctx = client_ctx(ca)
        assert served(t.port, ctx, "a.test") in (leaves["a"].der, leaves["a-rsa"].der)
        assert served(t.port, ctx, "x.wild.test") == leaves["a"].der
        assert served(t.port, ctx, "cn.test") == leaves["cn"].der           # no SAN: the CN counts
        assert served(t.port, ctx, "unknown.test") == leaves["0-default"].der
        assert served(t.port, ctx, None) == leaves["0-default"].der

        # TLS 1.2: the cipher suite's key type decides.
        ecdsa12 = client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        ecdsa12.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        rsa12 = client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        rsa12.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        assert served(t.port, ecdsa12, "a.test") == leaves["a"].der          # valid now, latest expiry
        assert served(t.port, rsa12, "a.test") == leaves["a-rsa"].der
        # TLS 1.3: the client's signature algorithms decide.
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        out = s_client(t.port, "-servername", "a.test", "-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256", "-CAfile",
                       str(ca_file))
        assert "Server public key is 2048 bit" in out and "Verify return code: 0 (ok)" in out, out
        out = s_client(t.port, "-servername", "a.test", "-tls1_3", "-sigalgs", "ecdsa_secp256r1_sha256",
                       "-CAfile", str(ca_file))
        assert "Server public key is 256 bit" in out and "Verify return code: 0 (ok)" in out, out

        log = t.output()
        assert "expired.pem): expired on" in log and "a-future.pem): not valid before" in log, log
        broken = [line for line in log.splitlines() if "broken.pem" in line]
        assert broken and "cannot parse the PEM certificate" in broken[0] and "skipped" in broken[0], log
        assert "swap" not in log and "README" not in log
    finally:
        t.stop()


def test_certs_dir_hot_reload_keeps_open_connections(ca, router, store_dir, tmp_path):
    d, leaves = store_dir
    t = start(tmp_path, router, certs_dir='"certs"', certs_poll_interval=0.2)
    try:
        ctx = client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        old_conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                                   server_hostname="a.test")
        assert old_conn.getpeercert(binary_form=True) == leaves["a"].der
        assert echo_once(old_conn) == b"ping"

        # Replace a.pem atomically with a later-expiring certificate; add a new name.
        renewed = make_leaf(ca, "a.test", "*.wild.test", valid_to=80 * DAY)
        renewed.write_pem(d / ".a.pem.tmp")
        os.replace(d / ".a.pem.tmp", d / "a.pem")
        make_leaf(ca, "new.test").write_pem(d / "new.pem")
        wait_until(lambda: served(t.port, ctx, "a.test") == renewed.der, what="renewed certificate served")
        assert served(t.port, client_ctx(ca), "new.test") != leaves["0-default"].der
        assert echo_once(old_conn, b"still open") == b"still open"       # the old connection is untouched

        # A broken rewrite of a loaded file: reported, its loaded version stays. A broken new file: skipped.
        (d / "a.pem").write_text("garbage")
        (d / "new2.pem").write_text("garbage")
        wait_until(lambda: "new2.pem" in t.output(), what="broken new file reported")
        wait_until(lambda: "a.pem: no PEM certificate in it; keeping the previously loaded version" in t.output(),
                   what="broken rewrite reported")
        assert served(t.port, ctx, "a.test") == renewed.der
        assert echo_once(old_conn, b"and still") == b"and still"
        old_conn.close()
    finally:
        t.stop()


def test_loose_key_permissions(ca, router, tmp_path):
    pem = make_leaf(ca, "loose.test").write_pem(tmp_path / "loose.pem")
    pem.chmod(0o644)
    config = tmp_path / "t.toml"
    body = f'[terminator]\nlisten = "127.0.0.1:{free_port()}"\nforward_to = "127.0.0.1:1"\n{{extra}}' \
           '[[certificate]]\ncert = "loose.pem"\n'
    config.write_text(body.format(extra=""))
    r = subprocess.run([str(BIN / "tls-terminator"), "--config", str(config)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r
    assert "certificate[0].cert" in r.stderr and "readable by group or others (mode 0644)" in r.stderr, r.stderr
    t = start(tmp_path, router, '[[certificate]]\ncert = "loose.pem"\n', allow_loose_key_permissions="true")
    try:
        assert served(t.port, client_ctx(ca), "loose.test")
        assert "readable by group or others" in t.output()      # still a warning
    finally:
        t.stop()


# --------------------------------------------------------------------------- session resumption

@pytest.mark.parametrize("version,tickets", [("TLSv1_2", "true"), ("TLSv1_3", "true"), ("TLSv1_2", "false"),
                                             ("TLSv1_3", "false")])
def test_session_resumption_survives_a_reload(ca, router, tmp_path, version, tickets):
    make_leaf(ca, "app.test").write_pem(tmp_path / "app.pem")
    t = start(tmp_path, router, f'[tls]\nsession_tickets = {tickets}\n[[certificate]]\ncert = "app.pem"\n')
    try:
        v = getattr(ssl.TLSVersion, version)
        ctx = client_ctx(ca, minimum_version=v, maximum_version=v)

        def session_after(session=None):
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                                 server_hostname="app.test", session=session) as s:
                assert echo_once(s) == b"ping"      # TLS 1.3 tickets arrive after the handshake
                return s.session, s.session_reused

        first, reused = session_after()
        assert not reused
        second, reused = session_after(first)
        assert reused, "second connection did not resume"
        t.proc.send_signal(signal.SIGHUP)           # new certificate contexts, same front context
        wait_until(lambda: t.output().count("reloaded") >= 1, what="reload")
        _, reused = session_after(second)
        assert reused, "resumption broke across a certificate reload"
    finally:
        t.stop()


def test_protocols_and_ciphers_are_configurable(ca, router, tmp_path):
    make_leaf(ca, "app.test", key_type="rsa").write_pem(tmp_path / "app.pem")
    t = start(tmp_path, router, '[tls]\nmin_version = "TLSv1.3"\nciphersuites = "TLS_CHACHA20_POLY1305_SHA256"\n'
                                '[[certificate]]\ncert = "app.pem"\n')
    try:
        with pytest.raises(ssl.SSLError):
            served(t.port, client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2), "app.test")
        with client_ctx(ca).wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                                        server_hostname="app.test") as s:
            assert s.version() == "TLSv1.3" and s.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"
    finally:
        t.stop()


@pytest.mark.parametrize("order, tls12_cipher, tls13_cipher", [
    # Both clients put ChaCha20 first; the server's lists put AES-128-GCM first.
    ("tls1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_CHACHA20_POLY1305_SHA256"),   # the default
    ("always", "ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"),
    ("never", "ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_CHACHA20_POLY1305_SHA256"),
])
def test_whose_cipher_order_wins_per_version(ca, router, tmp_path, order, tls12_cipher, tls13_cipher):
    make_leaf(ca, "app.test").write_pem(tmp_path / "app.pem")
    tls = "" if order == "tls1.2" else f'[tls]\nprefer_server_ciphers = "{order}"\n'
    t = start(tmp_path, router, tls + '[[certificate]]\ncert = "app.pem"\n')
    try:
        out12 = s_client(t.port, "-servername", "app.test", "-tls1_2",
                         "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256")
        assert f"Cipher is {tls12_cipher}" in out12, out12
        out13 = s_client(t.port, "-servername", "app.test", "-tls1_3",
                         "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256")
        assert f"Cipher is {tls13_cipher}" in out13, out13
    finally:
        t.stop()


# --------------------------------------------------------------------------- privileges

@pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")
def test_privileges_are_dropped_after_binding(ca, router, tmp_path):
    make_leaf(ca, "app.test").write_pem(tmp_path / "app.pem")
    jail = tmp_path / "jail"
    jail.mkdir()
    t = start(tmp_path, router, '[[certificate]]\ncert = "app.pem"\n', user='"nobody"', group='"nogroup"',
              chroot=f'"{jail}"')
    try:
        # The port listens from the bind on; connections are accepted only once privileges are
        # dropped: a served client means the drop is done (however slow the machine).
        with client_ctx(ca).wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                                        server_hostname="app.test") as s:
            assert echo_once(s) == b"ping"
        status = Path(f"/proc/{t.proc.pid}/status").read_text()
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        gid = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
        assert uid == ["65534"] * 4 and gid == ["65534"] * 4, status
        assert os.readlink(f"/proc/{t.proc.pid}/root") == str(jail)
    finally:
        t.stop()


# --------------------------------------------------------------------------- mTLS

@pytest.fixture
def mtls(ca, router, tmp_path):
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    for name in ("secure.test", "opt.test", "app.test"):
        make_leaf(ca, name).write_pem(tmp_path / f"{name}.pem")
    # Declared on the router's apps; the terminator follows them through router_config.
    (tmp_path / "router.toml").write_text(
        '[listen.main]\naddress = "127.0.0.1:1"\nproxy_protocol = true\n'
        '[[app]]\nname = "secure"\nhosts = ["secure.test"]\nclient_ca = "clients-ca.pem"\nservers = ["127.0.0.1:1"]\n'
        '[[app]]\nname = "opt"\nhosts = ["opt.test"]\nclient_ca = "opt-ca.pem"\nclient_cert = "optional"\n'
        'servers = ["127.0.0.1:2"]\n')
    clients.cert_pem.write_to_path(str(tmp_path / "opt-ca.pem"))
    tables = "".join(f'[[certificate]]\ncert = "{n}.pem"\n' for n in ("app.test", "secure.test", "opt.test"))
    t = start(tmp_path, router, tables, router_config='"router.toml"')
    yield t, clients
    t.stop()


def with_client_cert(ctx: ssl.SSLContext, leaf, tmp_path: Path) -> ssl.SSLContext:
    path = leaf.write_pem(tmp_path / f"client-{id(leaf)}.pem")
    ctx.load_cert_chain(str(path))
    return ctx


def talk(port: int, ctx: ssl.SSLContext, name: str) -> tuple[bytes, int]:
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=name) as s:
        return echo_once(s), s.getsockname()[1]


def test_mtls_required_accepts_a_good_client_and_reports_its_subject(ca, router, mtls, tmp_path):
    t, clients = mtls
    alice = make_leaf(clients, cn="alice", client=True)
    answer, port = talk(t.port, with_client_cert(client_ctx(ca), alice, tmp_path), "secure.test")
    assert answer == b"ping"
    header = router.header_for(port)
    assert header.client_cert_subject == "alice" and header.authority == "secure.test"


@pytest.mark.parametrize("who", ["nobody", "stranger"])
def test_mtls_required_rejects(ca, router, mtls, tmp_path, who):
    t, _ = mtls
    ctx = client_ctx(ca)
    if who == "stranger":      # a certificate from a CA the terminator does not trust
        ctx = with_client_cert(ctx, make_leaf(trustme.CA(), cn="mallory", client=True), tmp_path)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        talk(t.port, ctx, "secure.test")


def test_mtls_optional_and_other_names(ca, router, mtls, tmp_path):
    t, clients = mtls
    answer, port = talk(t.port, client_ctx(ca), "opt.test")
    assert answer == b"ping" and router.header_for(port).client_cert_subject is None
    bob = make_leaf(clients, cn="bob", client=True)
    answer, port = talk(t.port, with_client_cert(client_ctx(ca), bob, tmp_path), "opt.test")
    assert answer == b"ping" and router.header_for(port).client_cert_subject == "bob"
    answer, port = talk(t.port, client_ctx(ca), "app.test")       # no client_auth rule for this name
    assert answer == b"ping" and router.header_for(port).client_cert_subject is None


# --------------------------------------------------------------------------- SNI passthrough

class TlsBackend:
    """A TLS server with its own certificate behind the terminator's passthrough route: reads an
    optional PROXY v2 header off the raw socket, then does TLS and echoes once."""

    def __init__(self, leaf, d: Path, proxy: bool):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(leaf.write_pem(d / "backend.pem")))
        self.proxy = proxy
        self.headers: list[ProxyHeader] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for _ in range(4):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                if self.proxy:
                    buf = b""
                    while (result := decode(buf)) is None:
                        buf += conn.recv(1)       # byte by byte: nothing after the header is taken
                    self.headers.append(result[0])
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    data = tls.recv(100)
                    tls.sendall(b"backend:" + data)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("proxy", [True, False])
def test_passthrough_relays_raw_tls_to_the_backend(ca, router, tmp_path, proxy):
    backend_leaf = make_leaf(ca, "x.pass.test")
    backend = TlsBackend(backend_leaf, tmp_path, proxy)
    make_leaf(ca, "app.test").write_pem(tmp_path / "app.pem")
    t = start(tmp_path, router, f'[[passthrough]]\nsni = "*.pass.test"\nbackend = "127.0.0.1:{backend.port}"\n'
                                f'proxy_protocol = {str(proxy).lower()}\n[[certificate]]\ncert = "app.pem"\n')
    try:
        with client_ctx(ca).wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                                        server_hostname="x.pass.test") as s:
            assert s.getpeercert(binary_form=True) == backend_leaf.der     # the backend's own certificate
            s.sendall(b"hello")
            assert s.recv(100) == b"backend:hello"
            client = s.getsockname()
        if proxy:
            wait_until(lambda: backend.headers, timeout=5, what="PROXY header at the backend")
            assert backend.headers[0] == ProxyHeader(command="PROXY", family="TCP4", src=client,
                                                     dst=("127.0.0.1", t.port), authority="x.pass.test")
        # Other names are still terminated here.
        answer, _ = talk(t.port, client_ctx(ca), "app.test")
        assert answer == b"ping"
    finally:
        t.stop()
        backend.close()


# --------------------------------------------------------------------------- OCSP stapling

def test_ocsp_staple_is_served_and_reloaded(ca, router, tmp_path):
    leaf = make_leaf(ca, "app.test")
    leaf.write_pem(tmp_path / "app.pem")
    (tmp_path / "app.ocsp").write_bytes(leaf.ocsp_response())
    t = start(tmp_path, router, '[[certificate]]\ncert = "app.pem"\n')
    try:
        out = s_client(t.port, "-servername", "app.test", "-status")
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out, out
        # A new response next to the certificate is picked up with it on SIGHUP.
        from cryptography.x509 import ocsp
        (tmp_path / "app.ocsp").write_bytes(leaf.ocsp_response(ocsp.OCSPCertStatus.UNKNOWN))
        t.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "Cert Status: unknown" in s_client(t.port, "-servername", "app.test", "-status"),
                   what="new OCSP response stapled")
    finally:
        t.stop()


# --------------------------------------------------------------------------- sslyze

@pytest.mark.skipif(sslyze_binary() is None, reason="sslyze not installed (`make test` installs it, or set SSLYZE)")
def test_sslyze_finds_nothing_weak(ca, router, tmp_path):
    make_leaf(ca, "app.test").write_pem(tmp_path / "app.pem")
    make_leaf(ca, "app.test", key_type="rsa").write_pem(tmp_path / "app-rsa.pem")
    t = start(tmp_path, router, '[[certificate]]\ncert = "app.pem"\n[[certificate]]\ncert = "app-rsa.pem"\n')
    try:
        out = tmp_path / "sslyze.json"
        commands = ["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--reneg", "--compression",
                 "--heartbleed", "--openssl_ccs", "--fallback", "--robot", "--resum", "--elliptic_curves"]
        r = subprocess.run([str(sslyze_binary()), f"--json_out={out}", "--sni=app.test", *commands,
                            f"127.0.0.1:{t.port}"], capture_output=True, text=True, timeout=300)
        assert out.exists(), r.stdout + r.stderr
        result = json.loads(out.read_text())["server_scan_results"][0]
        assert result["scan_status"] == "COMPLETED", result
        scans = result["scan_result"]
        for name in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites",
                     "tls_1_1_cipher_suites"):
            assert scans[name]["result"]["accepted_cipher_suites"] == [], name
        accepted = [c["cipher_suite"]["name"] for v in ("tls_1_2_cipher_suites", "tls_1_3_cipher_suites")
                    for c in scans[v]["result"]["accepted_cipher_suites"]]
        assert accepted
        for suite in accepted:
            assert not any(weak in suite for weak in ("NULL", "anon", "RC4", "DES", "MD5", "EXPORT", "CBC")), suite
            assert "ECDHE" in suite or suite.startswith("TLS_AES") or suite.startswith("TLS_CHACHA20"), suite
        reneg = scans["session_renegotiation"]["result"]
        assert not reneg["is_vulnerable_to_client_renegotiation_dos"]
        assert reneg["supports_secure_renegotiation"]      # RFC 5746 signalled; renegotiation itself is off
        assert scans["robot"]["result"]["robot_result"].startswith("NOT_VULNERABLE"), scans["robot"]
        assert not scans["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"]
        assert not scans["tls_compression"]["result"]["supports_compression"]
        assert not scans["heartbleed"]["result"]["is_vulnerable_to_heartbleed"]
        resumption = scans["session_resumption"]["result"]
        assert resumption["tls_ticket_resumption_result"] == "FULLY_SUPPORTED", resumption
        assert resumption["session_id_resumption_result"] == "FULLY_SUPPORTED", resumption
        # Mozilla "intermediate": these three key exchange groups and no other (OpenSSL's default
        # list would add X448 and secp521r1).
        curves = {c["name"] for c in scans["elliptic_curves"]["result"]["supported_curves"]}
        assert curves == {"X25519", "secp256r1", "secp384r1"}, curves
    finally:
        t.stop()


def key_exchange(port: int, groups: str, version: str = "-tls1_3") -> str:
    """What `openssl s_client` offering only `groups` says of the key exchange ("X25519, 253 bits",
    "ECDH, secp384r1, 384 bits"); "" when the handshake fails."""
    out = s_client(port, "-servername", "app.test", version, "-groups", groups)
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Server Temp Key:")), "")


def test_key_exchange_groups_are_mozillas_by_default_and_follow_tls_groups(ca, router, tmp_path):
    make_leaf(ca, "app.test").write_pem(tmp_path / "app.pem")
    t = start(tmp_path, router, '[[certificate]]\ncert = "app.pem"\n')
    try:
        assert key_exchange(t.port, "X25519").startswith("X25519")
        assert key_exchange(t.port, "X25519:P-256", "-tls1_2").startswith("X25519")
        assert "secp384r1" in key_exchange(t.port, "P-384")
        assert "prime256v1" in key_exchange(t.port, "P-256")
        for refused in ("X448", "P-521", "ffdhe2048"):
            assert key_exchange(t.port, refused) == "", refused
    finally:
        t.stop()
    t = start(tmp_path, router, '[tls]\ngroups = ["X448", "secp521r1"]\n[[certificate]]\ncert = "app.pem"\n')
    try:
        assert key_exchange(t.port, "X448").startswith("X448")
        assert "secp521r1" in key_exchange(t.port, "P-521")
        assert key_exchange(t.port, "X25519") == ""
    finally:
        t.stop()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds + 2)
    try:
        while sock.recv(4096):       # an alert may come first
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    return True


def test_reading_the_client_hello_keeps_the_handshake_timeout_and_rejects_garbage(ca, router, tmp_path):
    make_leaf(ca, "app.test").write_pem(tmp_path / "app.pem")
    t = start(tmp_path, router, '[[passthrough]]\nsni = "*.pass.test"\nbackend = "127.0.0.1:1"\n'
                                '[[certificate]]\ncert = "app.pem"\n', handshake_timeout=1)
    try:
        # Silent, and trickling the first bytes of a ClientHello for a passthrough name: closed at the deadline.
        hello = client_hello("x.pass.test")
        for first in (b"", hello[:3]):
            with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
                start_time = time.monotonic()
                s.sendall(first)
                closed_within(s, 1)
                assert 0.8 < time.monotonic() - start_time < 3
        # Not TLS at all: OpenSSL answers (an alert) and closes, at once.
        with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
            start_time = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            closed_within(s, 1)
            assert time.monotonic() - start_time < 0.8
        # A passthrough backend that is down: the client is closed, the refusal logged.
        with socket.create_connection(("127.0.0.1", t.port), timeout=5) as s:
            s.sendall(hello)
            closed_within(s, 1)
        wait_until(lambda: "cannot reach passthrough backend 127.0.0.1:1 for x.pass.test" in t.output(),
                   what="backend failure logged")
        answer, _ = talk(t.port, client_ctx(ca), "app.test")
        assert answer == b"ping"
    finally:
        t.stop()


# --------------------------------------------------------------------------- through the router: mTLS identity, SNI vs Host

ROUTER_BEHIND = """
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "state/health.json"
trusted_sources = ["127.0.0.1/32"]
[listen.from_terminator]
address = "127.0.0.1:{port}"
proxy_protocol = true
scheme = "https"
[[app]]
name = "recorded"
hosts = ["a.localhost", "b.localhost"]
servers = ["127.0.0.1:{backend}"]
[[app]]
name = "secure"
hosts = ["secure.localhost"]
client_ca = "clients-ca.pem"
servers = ["127.0.0.1:{backend}"]
"""


@pytest.fixture
def stack(ca, tmp_path):
    """tls-terminator (client certificate required for secure.localhost) -> mux-router -> a
    recording backend."""
    backend = RecordingBackend().start()
    port = free_port()
    (tmp_path / "state").mkdir()
    (tmp_path / "mux-router.toml").write_text(ROUTER_BEHIND.format(port=port, backend=backend.port))
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    router_proc = start_daemon(["mux-router", "--config", str(tmp_path / "mux-router.toml")],
                               wait_for=("127.0.0.1", port))
    make_leaf(ca, "a.localhost", "b.localhost", "secure.localhost").write_pem(tmp_path / "site.pem")
    t = None
    try:
        t = Terminator(tmp_path, '[[certificate]]\ncert = "site.pem"\n', f"127.0.0.1:{port}",
                       router_config='"mux-router.toml"')
        yield t, clients, backend
    finally:
        if t is not None:
            t.stop()
        out = stop_daemon(router_proc)
        backend.stop()
    assert "Traceback" not in out, out


def http_exchange(s: ssl.SSLSocket, host: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """One request on `s`, one Content-Length response read back."""
    s.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {n.lower(): v for n, v in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = s.recv(65536)
        assert chunk, "closed in the body"
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def closed_by_peer(s: ssl.SSLSocket) -> bool:
    try:
        return s.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_backend_sees_the_client_cert_subject_and_never_a_forged_one(ca, stack, tmp_path):
    t, clients, backend = stack
    ctx = with_client_cert(client_ctx(ca), make_leaf(clients, cn="alice", client=True), tmp_path)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                         server_hostname="secure.localhost") as s:
        status, _, body = http_exchange(s, "secure.localhost", "X-Client-Cert-Subject: forged\r\n")
        assert status == 200 and body == b"recorded\n"
    # Without a client certificate (a name that does not ask for one) the forged field is dropped.
    with client_ctx(ca).wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                                    server_hostname="a.localhost") as s:
        assert http_exchange(s, "a.localhost", "x-client-cert-subject: forged\r\n")[0] == 200
    wait_until(lambda: len(backend.snapshot()) == 2, timeout=5, what="both requests recorded")
    heads = {data.split(b"\r\nHost: ", 1)[1].split(b"\r\n", 1)[0]: data for data in backend.snapshot()}
    assert b"forged" not in b"".join(heads.values())
    assert heads[b"secure.localhost"].count(b"X-Client-Cert-Subject: alice\r\n") == 1
    assert b"client-cert-subject" not in heads[b"a.localhost"].lower()


def test_a_host_other_than_the_sni_is_421_and_not_forwarded(ca, stack, tmp_path):
    t, clients, backend = stack
    # Passed the mTLS check for secure.localhost, then asks for another host on the same connection.
    ctx = with_client_cert(client_ctx(ca), make_leaf(clients, cn="alice", client=True), tmp_path)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                         server_hostname="secure.localhost") as s:
        assert http_exchange(s, "Secure.Localhost.")[0] == 200
        status, headers, body = http_exchange(s, "a.localhost")
        assert status == 421 and headers["connection"] == "close" and body.startswith(b"421 Misdirected Request")
        assert closed_by_peer(s)
    # Without a client certificate at all: SNI a.localhost, Host b.localhost.
    with client_ctx(ca).wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10),
                                    server_hostname="a.localhost") as s:
        assert http_exchange(s, "b.localhost:443")[0] == 421
    time.sleep(0.2)
    assert len(backend.snapshot()) == 1 and b"Host: Secure.Localhost." in backend.snapshot()[0]

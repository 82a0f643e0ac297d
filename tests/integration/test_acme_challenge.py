"""The router's ACME http-01 responder through real sockets: a real mux-router, curl as the client,
a real backend behind it. The challenge is answered on a plain listener for any Host, before the
https redirect and before routing; never on a TLS-scheme listener."""
from __future__ import annotations

import http.server
import subprocess
import threading

import pytest

from tests.helpers import free_port, start_daemon, stop_daemon

TOKEN = "tok_EN-123abc"
KEY_AUTH = TOKEN + ".thumbprint_0123456789abcdefABCDEF-_xyz"


class _App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"from the app\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def backend():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _router(tmp_path, backend_port: int, redirect: bool):
    challenges = tmp_path / "challenges"
    challenges.mkdir()
    (challenges / TOKEN).write_text(KEY_AUTH)
    plain, tls_scheme = free_port(), free_port()
    rule = """
[[redirect]]
listener = "public"
to_scheme = "https"
""" if redirect else ""
    config = tmp_path / "mux-router.toml"
    config.write_text(f"""
[router]
state_file = "state/health.json"
access_log_file = "-"
acme_challenge_dir = "challenges"
[listen.public]
address = "127.0.0.1:{plain}"
[listen.secure]
address = "127.0.0.1:{tls_scheme}"
scheme = "https"
{rule}
[[app]]
name = "site"
hosts = ["site.example"]
servers = ["127.0.0.1:{backend_port}"]
""")
    proc = start_daemon(["mux-router", "--config", str(config)], wait_for=("127.0.0.1", plain))
    return proc, plain, tls_scheme, challenges


def _curl(port: int, path: str, host: str = "site.example", method: str = "GET") -> tuple[str, str]:
    """(status, body) of one request made by curl."""
    flag = ["-I"] if method == "HEAD" else []
    out = subprocess.run(["curl", "-sS", "--max-time", "10", *flag, "-H", f"Host: {host}",
                          "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    body, _, status = out.rpartition("\n")
    return status, body


@pytest.mark.parametrize("redirect", [True, False], ids=["with-https-redirect", "without-redirect"])
def test_challenge_answered_before_redirect_and_routing(tmp_path, backend, redirect):
    proc, plain, tls_scheme, challenges = _router(tmp_path, backend, redirect)
    try:
        # Any Host, even one no app serves: the CA asks for the name it validates.
        for host in ("site.example", "unknown.example"):
            assert _curl(plain, f"/.well-known/acme-challenge/{TOKEN}", host) == ("200", KEY_AUTH)
        status, head = _curl(plain, f"/.well-known/acme-challenge/{TOKEN}", method="HEAD")
        assert status == "200" and f"content-length: {len(KEY_AUTH)}" in head.lower()
        # Unknown, malformed, too long tokens, and paths below a token: 404, never the app.
        for path in ("/.well-known/acme-challenge/absent", "/.well-known/acme-challenge/",
                     "/.well-known/acme-challenge/bad.token", "/.well-known/acme-challenge/" + "a" * 129,
                     f"/.well-known/acme-challenge/{TOKEN}/x"):
            assert _curl(plain, path)[0] == "404", path
        # An encoded slash is refused by the path rules before anything is looked up.
        assert _curl(plain, "/.well-known/acme-challenge/%2e%2e%2fmux-router.toml")[0] == "400"
        # The file removed when the order ends: gone at once.
        (challenges / TOKEN).unlink()
        assert _curl(plain, f"/.well-known/acme-challenge/{TOKEN}")[0] == "404"
        # Everything else is as before: the redirect, or the app.
        other = _curl(plain, "/page")
        assert other[0] == ("301" if redirect else "200")
        # A TLS-scheme listener does not answer challenges: the request is routed.
        (challenges / TOKEN).write_text(KEY_AUTH)
        assert _curl(tls_scheme, f"/.well-known/acme-challenge/{TOKEN}") == ("200", "from the app\n")
    finally:
        stop_daemon(proc)

"""Request targets end to end (issue 18, sections 3 and 4): a real router (instrumented to say
when it forwards a request, and on which backend connection, see
test_router_fastpath.INSTRUMENT), real backends, raw sockets from 127.0.0.2 as the outside.

Every request is sent twice: whole in one write, on a warm pool (nothing but the verdict stops
it from going on at once), and split over two writes, so that a head parsed in one piece and one
parsed in pieces are held to the same normalised path.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from frontgate import proxy_protocol
from tests.helpers import daemon_output, free_port, start_daemon, stop_daemon, wait_until
from tests.integration.test_router import Backend, LoopThread, RawClient, parse_httplog, running
from tests.integration.test_router_fastpath import INSTRUMENT, path_markers

UNTRUSTED, TRUSTED = "127.0.0.2", "127.0.0.1"

ROUTER_TOML = """
[router]
access_log_file = "-"
state_file = "{state}"
trusted_sources = ["127.0.0.1/32"]
access_log_format = "{log_format}"
[listen.public]
address = "127.0.0.1:{public}"
[listen.proxied]
address = "127.0.0.1:{proxied}"
proxy_protocol = true
scheme = "https"
[timeouts]
http_request = 2
[[redirect]]
hosts = ["redir.example"]
prefix = "/"
code = 302
[[redirect]]
hosts = ["scheme.example"]
to_scheme = "https"
[[redirect]]
hosts = ["moved.example"]
prefix = "https://new.example"
[[redirect]]
hosts = ["fixed.example"]
location = "/fixed"
[[app]]
name = "admin"
hosts = ["admin.example.com"]
path_prefix = "/admin"
servers = ["{admin}"]
acl = [{{ path_prefix = "/admin", allow = ["trusted"] }}]
[[app]]
name = "site"
hosts = ["admin.example.com"]
servers = ["{site}"]
acl = [{{ path_prefix = "/admin", allow = ["trusted"] }}]
[[app]]
name = "internal"
hosts = ["internal.example.com"]
servers = ["{internal}"]
acl = [{{ path_prefix = "/", allow = ["trusted"] }}]
[[app]]
name = "fallback"
default = true
servers = ["{fallback}"]
"""


class Env:
    def __init__(self, tmp: Path, log_format: str = "httplog"):
        self.loop = LoopThread()
        self.backends = {n: Backend(n) for n in ("admin", "site", "internal", "fallback")}
        self.public, self.proxied = free_port(), free_port()
        self.config = tmp / "mux-router.toml"
        self.state = tmp / "health.json"
        self.log_format = log_format
        self.proc = None
        self._unique = iter(range(1, 1_000_000))

    def start(self):
        for b in self.backends.values():
            self.loop.run(b.start())
        self.config.write_text(ROUTER_TOML.format(
            state=self.state, public=self.public, proxied=self.proxied, log_format=self.log_format,
            **{n: b.address for n, b in self.backends.items()}))
        self.proc = start_daemon([sys.executable, "-c", INSTRUMENT, "--config", str(self.config)],
                                 wait_for=("127.0.0.1", self.public))

    def stop(self) -> str:
        try:
            return stop_daemon(self.proc) if self.proc else ""
        finally:
            for b in self.backends.values():
                if b.server is not None:
                    self.loop.run(b.kill())
            self.loop.stop()

    def uid(self, target: str) -> str:
        """target made unique in the router's output by a query parameter (kept as sent)."""
        if target == "*":
            return target
        return f"{target}{'&' if '?' in target else '?'}t={next(self._unique)}"

    def markers(self, target: str) -> list[str]:
        return path_markers(daemon_output(self.proc), target)

    def forwarded(self) -> int:
        return sum(b.requests for b in self.backends.values())

    def warm(self, host: str, target: str):
        """A trusted request on its own connection: the app's backend connection is pooled after
        it, so that the next whole request for that app can take the fast path."""
        c = RawClient(self.public, TRUSTED)
        try:
            assert c.request(host, target)[0] == 200
        finally:
            c.close()
        time.sleep(0.05)


def send(port: int, source: str, method: str, target: str, host: str, split: bool):
    """(status, headers, body) for one request on its own connection, whole or in two writes."""
    c = RawClient(port, source)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        if split:
            c.send(head[:len(method) + len(target) + 14])       # the request line, then the rest
            time.sleep(0.05)
            c.send(head[len(method) + len(target) + 14:])
        else:
            c.send(head)
        return c.response()
    finally:
        c.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from running(Env(tmp_path_factory.mktemp("targets")))


# --------------------------------------------------------------------------- path ACLs and routing

ADMIN = "admin.example.com"
INTERNAL = "internal.example.com"
# (method, target, host, status from the outside): 403 when the normalised path is under the ACL,
# 400 when the target cannot be normalised safely. Not one of them may reach a backend.
OUTSIDE = [
    ("GET", "/admin", ADMIN, 403),
    ("GET", "/x/../admin", ADMIN, 403),
    ("GET", "/%61dmin", ADMIN, 403),
    ("GET", "/%61%64%6D%69%6e/x", ADMIN, 403),
    ("GET", "//admin", ADMIN, 403),
    ("GET", "///admin//x", ADMIN, 403),
    ("GET", "/./admin", ADMIN, 403),
    ("GET", "/admin/", ADMIN, 403),
    ("GET", "/admin/.", ADMIN, 403),
    ("GET", "/x/%2e%2e/admin", ADMIN, 403),
    ("GET", "/x/.%2E/admin", ADMIN, 403),
    ("GET", "/x//../admin", ADMIN, 403),
    ("GET", "/admin;jsessionid=1", ADMIN, 403),
    ("GET", "http://admin.example.com/x/../admin", ADMIN, 403),
    ("GET", "HTTP://admin.example.com//%61dmin", ADMIN, 403),
    ("GET", "http://internal.example.com?x", INTERNAL, 403),
    ("GET", "http://internal.example.com", INTERNAL, 403),
    ("OPTIONS", "*", INTERNAL, 403),
    ("GET", "/admin%2f..", ADMIN, 400),
    ("GET", "/admin%2F", ADMIN, 400),
    ("GET", "/x/..%2fadmin", ADMIN, 400),
    ("GET", "/x%5c..%5cadmin", ADMIN, 400),
    ("GET", "/x\\..\\admin", ADMIN, 400),
    ("GET", "/x#frag", ADMIN, 400),
    ("GET", "/admin#x", ADMIN, 400),
    ("GET", "/../admin", ADMIN, 400),
    ("GET", "/%2e%2e/admin", ADMIN, 400),
    ("GET", "/x/../../admin", ADMIN, 400),
    ("GET", "/admin%00", ADMIN, 400),
    ("GET", "/x/..;/admin", ADMIN, 400),
    ("GET", "/;x/admin", ADMIN, 400),
    ("GET", "/%252e%252e/admin", ADMIN, 400),
    ("GET", "/x%252fadmin", ADMIN, 400),
    ("GET", "/adm%69n%", ADMIN, 400),
    ("GET", "http://admin.example.com/../admin", ADMIN, 400),
]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("method,target,host,status", OUTSIDE, ids=[f"{m} {t}" for m, t, _, _ in OUTSIDE])
def test_outside_requests_for_admin_paths_are_refused_on_both_paths(env, method, target, host, status, split):
    if not split:
        env.warm(host, "/warm")         # a pooled connection: nothing but the verdict stops the request
    before = env.forwarded()
    for _ in range(2):                  # the second time from the parser's memo, when it keeps one
        assert send(env.public, UNTRUSTED, method, target, host, split)[0] == status
    assert env.forwarded() == before
    assert env.markers(target) == []                # never forwarded


# (method, target, host, app, request line the backend reads): from a trusted source.
INSIDE = [
    ("GET", "/x/../%61dmin/p?q=/../%2f", ADMIN, "admin", "GET /admin/p?q=/../%2f"),
    ("GET", "//admin", ADMIN, "admin", "GET /admin"),
    ("GET", "/%7Euser/./a", ADMIN, "site", "GET /~user/a"),
    ("GET", "http://admin.example.com?x", ADMIN, "site", "GET http://admin.example.com/?x"),
    ("GET", "/ADMIN", ADMIN, "site", "GET /ADMIN"),          # paths are case-sensitive: not folded
    ("OPTIONS", "*", INTERNAL, "internal", "OPTIONS *"),
]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("method,target,host,app,line", INSIDE, ids=[f"{m} {t}" for m, t, _, _, _ in INSIDE])
def test_the_backend_reads_the_normalised_target_the_router_judged(env, method, target, host, app, line, split):
    target = env.uid(target)
    line += "" if target == "*" else target[target.rindex("?t=") if "?t=" in target else target.rindex("&t="):]
    if not split:                       # the pool of the app it goes to
        env.warm(host, line.split(" ")[1].partition("?")[0].replace("*", "/") + "?warm")
    status, _, body = send(env.public, TRUSTED, method, target, host, split)
    assert status == 200
    echo = json.loads(body)
    assert (echo["name"], echo["request_line"]) == (app, line + " HTTP/1.1")
    if target != "*":                   # "*" is not unique: its markers are several tests'
        assert len(env.markers(target)) == 1 and (split or env.markers(target) == ["POOLED"])


def test_outside_case_variants_reach_only_what_the_backend_names_them(env):
    # Documented, not folded: `/ADMIN` is another path than `/admin`; a case-insensitive backend
    # needs its ACL written for every spelling (or a path_regex).
    status, _, body = send(env.public, UNTRUSTED, "GET", "/ADMIN", ADMIN, False)
    assert status == 200 and json.loads(body)["request_line"] == "GET /ADMIN HTTP/1.1"


# --------------------------------------------------------------------------- redirects

# (host, Location for GET //evil.example/x): no Location names a host the rule did not.
REDIRECTS = [
    ("redir.example", "/evil.example/x"),
    ("scheme.example", "https://scheme.example/evil.example/x"),
    ("moved.example", "https://new.example/evil.example/x"),
    ("fixed.example", "/fixed"),
]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("host,location", REDIRECTS)
@pytest.mark.parametrize("target", ["//evil.example/x", "///evil.example/x", "/./evil.example/x",
                                    "/%2F/evil.example/x", "/\\evil.example/x"])
def test_redirects_never_name_another_host(env, host, location, target, split):
    status, headers, _ = send(env.public, UNTRUSTED, "GET", target, host, split)
    if "%2F" in target or "\\" in target:
        assert status == 400            # refused before any redirect rule is looked at
        return
    assert status in (301, 302) and headers["location"] == location


# --------------------------------------------------------------------------- access log

def log_lines(env: Env, marker: str) -> list[str]:
    return wait_until(lambda: [l for l in daemon_output(env.proc).splitlines() if marker in l],
                      what=f"log line with {marker}")


def test_quotes_in_a_target_and_a_newline_in_an_sni_cannot_forge_log_lines(env):
    target = env.uid('/a"b')
    status, _, body = send(env.public, TRUSTED, "GET", target, ADMIN, False)
    assert status == 200 and json.loads(body)["request_line"] == f"GET {target} HTTP/1.1"
    escaped = target.replace('"', "#22")
    [line] = log_lines(env, escaped)
    assert parse_httplog(line)["request"] == f"GET {escaped} HTTP/1.1"
    # A 421 notes the connection's SNI name: a newline in it must not start a line of its own.
    header = proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=("203.0.113.7", 40000), dst=("127.0.0.1", 443),
        authority="evil.example\n203.0.113.9:1 [forged]", tls_version="TLSv1.3"))
    c = RawClient(env.proxied)
    c.send(header)
    assert c.request(ADMIN, "/sni-note")[0] == 421
    c.close()
    [line] = log_lines(env, '"GET /sni-note HTTP/1.1"')
    # The name is not a host name at all (frontgate.names): the note says so, and never quotes it.
    assert "this connection is for <invalid server name>, not" in line and "forged" not in line
    assert not any(l.startswith("203.0.113.9:1 [forged]") for l in daemon_output(env.proc).splitlines())


@pytest.fixture(scope="module")
def json_env(tmp_path_factory):
    yield from running(Env(tmp_path_factory.mktemp("targets-json"), log_format="json"))


def test_json_access_log_escapes_the_same_fields(json_env):
    target = json_env.uid('/a"b')
    assert send(json_env.public, TRUSTED, "GET", target, ADMIN, False)[0] == 200
    escaped = target.replace('"', "#22")
    [line] = log_lines(json_env, escaped)
    assert json.loads(line)["request"] == f"GET {escaped} HTTP/1.1"

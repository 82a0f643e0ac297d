"""mux_router.exchange.Exchange, the sans-IO machine of one client connection, driven by an
in-memory peer: events in (client bytes, a backend attached, backend bytes, timeouts), the actions
it asks of its transport recorded and checked. No sockets, no event loop."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from frontgate import proxy_protocol
from frontgate.config import load_router_config
from mux_router.exchange import CLOSED, DISPATCH, EXCHANGE, IDLE, TUNNEL, Exchange
from mux_router.peer import Peer

ROUTER_TOML = """
[router]
access_log_file = "-"
state_file = "{tmp}/health.json"
trusted_sources = ["127.0.0.1/32"]
[listen.public]
address = "127.0.0.1:8080"
[listen.tls]
address = "127.0.0.1:8081"
proxy_protocol = true
scheme = "https"
[timeouts]
http_request = 5
keep_alive = 7
client = 11
server = 13
[[redirect]]
hosts = ["old.localhost"]
location = "https://new.localhost/"
[[app]]
name = "web"
hosts = ["web.localhost"]
servers = ["127.0.0.1:9001"]
max_body = 10
[[app.acl]]
path_prefix = "/admin"
allow = ["10.0.0.0/8"]
"""


class Peer2Io:
    """The transport, in memory: what the machine asked for, in order."""

    def __init__(self):
        self.actions: list[tuple] = []
        self.client = b""               # bytes written to the client
        self.backend = b""              # bytes written to the backend
        self.logged: list[tuple] = []

    def to_client(self, data):
        self.client += data

    def to_backend(self, data):
        self.backend += data

    def log(self, *fields):
        self.logged.append(fields)

    def __getattr__(self, name):        # every other action: recorded as (name, *args)
        return lambda *args: self.actions.append((name, *args))

    def named(self, name):
        return [a[1:] for a in self.actions if a[0] == name]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exchange")
    (tmp / "mux-router.toml").write_text(ROUTER_TOML.format(tmp=tmp))
    return load_router_config(tmp / "mux-router.toml")


def machine(config, listener="public", peer=("127.0.0.1", 40000), clock=None):
    router = SimpleNamespace(config=config, listeners={l.address: l for l in config.listeners}, stopping=False)
    bound = next(l for l in config.listeners if l.name == listener)
    io = Peer2Io()
    ticks = iter(range(10**6))
    ex = Exchange(router, Peer(router, bound, peer), io, bound.proxy_protocol,
                  clock=clock or (lambda: next(ticks) / 1000))
    ex.start()
    return ex, io


def get(target="/", host="web.localhost", extra=""):
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def status_line(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


# --------------------------------------------------------------------------- the router's own answers

@pytest.mark.parametrize("request_bytes,status,termination,keeps", [
    (get(host="nowhere.localhost"), b"404", "PR", True),
    (get(host="old.localhost"), b"301", "LR", True),
    (get("/admin/x"), b"403", "PR", True),
    (b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 11\r\n\r\n", b"413", "PR", False),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400", "PR", False),
    (b"GET / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
     b"400", "PR", False),
    (b"GET / HTTP/2.0\r\nHost: web.localhost\r\n\r\n", b"505", "PR", False),
])
def test_answers_the_router_gives_itself(config, request_bytes, status, termination, keeps):
    ex, io = machine(config)
    ex.client_data(request_bytes)
    assert status_line(io.client).split(b" ")[1] == status
    assert io.named("dispatch") == []                           # nothing reached a backend
    assert (io.logged[-1][2], io.logged[-1][6]) == (int(status), termination)
    assert (ex.state is IDLE) == keeps
    assert (io.named("close_client") == [(True,)]) == (not keeps)     # closing: lingers


def test_a_simple_request_on_a_pooled_connection(config):
    ex, io = machine(config)
    ex.client_data(get("/p?q=1", extra="Cookie: a=1\r\n"))
    assert ex.state is DISPATCH and io.named("dispatch")[0][1] == b""
    ex.backend_ready("web/127.0.0.1:9001", True)
    assert ex.state is EXCHANGE
    assert io.backend.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: web.localhost\r\nCookie: a=1\r\n")
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in io.backend and b"Connection: keep-alive" in io.backend
    assert io.named("server_deadline")[-1] == (13,)
    ex.backend_data(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
    assert io.client == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert io.named("release_backend") == [(True,)]
    assert ex.state is IDLE and io.named("client_deadline")[-1] == (7,)      # keep_alive
    fields = io.logged[-1]
    assert (fields[1], fields[2], fields[3], fields[6]) == ("web/127.0.0.1:9001", 200, len(io.client), "--")


@pytest.mark.parametrize("pieces", [
    [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"],
    [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"],
    [b"HTTP/1.1 103 Early", b" Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nCon", b"tent-Length: 1\r\n\r\nx"],
])
def test_interim_responses_go_through_however_they_are_split(config, pieces):
    ex, io = machine(config)
    ex.client_data(get())
    ex.backend_ready("web/s", True)
    for piece in pieces:
        ex.backend_data(piece)
    assert io.client == (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert ex.state is IDLE and io.named("release_backend") == [(True,)]


@pytest.mark.parametrize("response,client_gets,reusable,keeps", [
    # framing: length, chunked, none (204), close-delimited
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"abc", True, True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n",
     True, True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True, True),
    # more than the response: the connection is not reused
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcXYZ", b"abc", False, True),
    # the backend closes after this one
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc", b"abc", False, True),
])
def test_response_framing(config, response, client_gets, reusable, keeps):
    ex, io = machine(config)
    ex.client_data(get())
    ex.backend_ready("web/s", True)
    ex.backend_data(response)
    assert io.client.endswith(b"\r\n\r\n" + client_gets)
    assert io.named("release_backend") == [(reusable,)]
    assert (ex.state is IDLE) == keeps


def test_a_close_delimited_response_ends_with_the_backend_and_closes_the_client(config):
    ex, io = machine(config)
    ex.client_data(get())
    ex.backend_ready("web/s", True)
    ex.backend_data(b"HTTP/1.1 200 OK\r\n\r\nuntil")
    assert b"Connection: close" in io.client
    ex.backend_data(b" the end")
    ex.backend_closed()
    assert io.client.endswith(b"\r\n\r\nuntil the end") and ex.state is CLOSED
    assert io.named("release_backend") == [(False,)] and io.named("close_client") == [(False,)]


@pytest.mark.parametrize("event,status,termination", [
    (lambda ex: ex.backend_data(b"HTTP/1.1 two hundred\r\n\r\n"), 502, "SH"),
    (lambda ex: ex.server_timeout(), 504, "sH"),
    (lambda ex: ex.backend_closed("reset"), 502, "SH"),
])
def test_no_usable_response_head_is_the_routers_answer(config, event, status, termination):
    ex, io = machine(config)
    ex.client_data(get())
    ex.backend_ready("web/s", False)
    event(ex)
    assert status_line(io.client).split(b" ")[1] == str(status).encode()
    assert io.named("release_backend") == [(False,)]
    assert (io.logged[-1][2], io.logged[-1][6]) == (status, termination)
    assert ex.state is IDLE             # the client asked for keep-alive and sent no body


def test_a_stale_pooled_connection_is_retried_fresh_once(config):
    ex, io = machine(config)
    ex.client_data(get())
    ex.backend_ready("web/s", True)
    ex.backend_closed()                 # closed before a byte came back
    assert io.named("redo_fresh") == [()] and ex.state is DISPATCH and io.client == b""
    ex.backend_ready("web/s", False)
    assert io.backend.count(b"GET / HTTP/1.1") == 2
    ex.backend_closed()                 # a fresh one that closes too: 502
    assert status_line(io.client) == b"HTTP/1.1 502 Bad Gateway"


def test_a_cut_response_closes_the_client(config):
    ex, io = machine(config)
    ex.client_data(get())
    ex.backend_ready("web/s", True)
    ex.backend_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    ex.backend_closed()
    assert ex.state is CLOSED and io.logged[-1][6] == "SD"
    assert io.logged[-1][5] == "response cut: backend closed with 7 body bytes missing"


@pytest.mark.parametrize("body,pieces,backend_gets", [
    (b"Content-Length: 5\r\n\r\n", [b"hel", b"lo"], b"hello"),
    (b"Transfer-Encoding: chunked\r\n\r\n", [b"5\r\nhel", b"lo\r\n0\r\nX-Forwarded-For: 1.2.3.4\r\nX-Ok: 1\r\n\r\n"],
     b"5\r\nhello\r\n0\r\nX-Ok: 1\r\n\r\n"),        # a router-owned trailer field is dropped
])
def test_request_bodies_go_on_framed_as_the_router_read_them(config, body, pieces, backend_gets):
    ex, io = machine(config)
    ex.client_data(b"POST /up HTTP/1.1\r\nHost: web.localhost\r\n" + body + pieces[0])
    ex.backend_ready("web/s", False)
    assert io.named("server_deadline") == []            # the client's pace, not the server's
    for piece in pieces[1:]:
        ex.client_data(piece)
    assert io.backend.endswith(b"\r\n\r\n" + backend_gets)
    assert io.named("server_deadline")[-1] == (13,)     # the body is in: now the server's
    ex.backend_data(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert ex.state is IDLE and io.named("release_backend") == [(True,)]


def test_a_chunked_body_over_the_apps_limit_is_413(config):
    ex, io = machine(config)
    ex.client_data(b"POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
    ex.backend_ready("web/s", False)
    ex.client_data(b"b\r\nhello world\r\n0\r\n\r\n")
    assert status_line(io.client).startswith(b"HTTP/1.1 413 ")
    assert io.named("release_backend") == [(False,)] and ex.state is CLOSED
    assert io.logged[-1][6] == "PD"


def test_a_client_that_leaves_in_the_body_is_499(config):
    ex, io = machine(config)
    ex.client_data(b"PUT / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 5\r\n\r\nab")
    ex.backend_ready("web/s", False)
    ex.client_eof_received()
    assert io.logged[-1][2] == 499 and io.logged[-1][6] == "CD" and ex.state is CLOSED


def test_pipelined_requests_wait_for_the_one_before(config):
    ex, io = machine(config)
    ex.client_data(get("/1") + get("/2") + get(host="nowhere.localhost"))
    assert len(io.named("dispatch")) == 1
    ex.backend_ready("web/s", True)
    ex.backend_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert len(io.named("dispatch")) == 2 and io.backend.count(b"GET /") == 1
    ex.backend_ready("web/s", True)
    ex.backend_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    # The third is the router's own answer, in order after the second.
    assert re.findall(rb"HTTP/1.1 (\d{3})", io.client) == [b"200", b"200", b"404"]
    assert ex.state is IDLE


def test_thousands_of_pipelined_refusals_do_not_recurse(config):
    ex, io = machine(config)
    ex.client_data(get(host="nowhere.localhost") * 3000)
    assert io.client.count(b"HTTP/1.1 404") == 3000 and len(io.logged) == 3000


@pytest.mark.parametrize("pieces,answered", [
    ([b"GET / HTTP/1.1\r\nHo"], b""),                               # then the timeout: 408
    ([], None),                                                     # nothing asked: closed quietly
])
def test_request_head_timeout(config, pieces, answered):
    ex, io = machine(config)
    for piece in pieces:
        ex.client_data(piece)
    ex.client_timeout()
    assert ex.state is CLOSED
    if answered is None:
        assert io.client == b"" and io.logged == [] and io.named("close_client") == [(False,)]
    else:
        assert status_line(io.client) == b"HTTP/1.1 408 Request Timeout"
        assert io.logged[-1][4] == "<BADREQ>" and io.logged[-1][6] == "cR"


def test_a_websocket_upgrade_becomes_a_tunnel(config):
    ex, io = machine(config)
    ex.client_data(get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n"))
    ex.backend_ready("web/s", False)
    assert b"Connection: Upgrade" in io.backend and b"Upgrade: websocket" in io.backend
    ex.backend_data(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframe")
    assert ex.state is TUNNEL and io.named("start_tunnel") == [(b"", b"frame")]
    assert io.client.endswith(b"\r\n\r\nframe")
    ex.tunnel_ended("", 10, 20)
    assert io.logged[-1][2] == 101 and io.logged[-1][-1] > 20


def test_a_tunnel_starts_with_what_already_passed_each_way(config):
    """The bytes after the two heads (a client's frame sent with its upgrade, the backend's first
    frame with its 101) are the tunnel's prelude: its keepalive counts frames from their start."""
    ex, io = machine(config)
    ex.client_data(get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n")
                   + b"\x81\x02hi")
    ex.backend_ready("web/s", False)
    ex.backend_data(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                    b"\x81\x01x")
    assert io.named("start_tunnel") == [(b"\x81\x02hi", b"\x81\x01x")]
    assert io.backend.endswith(b"\r\n\r\n\x81\x02hi")


def test_a_101_without_an_upgrade_request_is_502(config):
    ex, io = machine(config)
    ex.client_data(get())
    ex.backend_ready("web/s", True)
    ex.backend_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert status_line(io.client) == b"HTTP/1.1 502 Bad Gateway"


def header(src="203.0.113.7", authority="web.localhost") -> bytes:
    return proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=(src, 40000), dst=("127.0.0.1", 443), authority=authority))


@pytest.mark.parametrize("peer,data,outcome", [
    (("127.0.0.2", 1), b"", "refused"),                              # untrusted socket: closed at once
    (("127.0.0.1", 1), b"GET / HTTP/1.1\r\n\r\n", "400"),            # no PROXY header
    (("127.0.0.1", 1), header() + get(), "forwarded"),
    (("127.0.0.1", 1), header(authority="other.localhost") + get(), "421"),
])
def test_proxy_header_intake(config, peer, data, outcome):
    ex, io = machine(config, listener="tls", peer=peer)
    if data:
        ex.client_data(data)
    if outcome == "refused":
        assert ex.state is CLOSED and io.client == b""
    elif outcome == "forwarded":
        ex.backend_ready("web/s", True)
        assert b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https" in io.backend
    else:
        assert status_line(io.client).split(b" ")[1] == outcome.encode()
        assert ex.state is CLOSED


@pytest.mark.parametrize("listener,data,idle", [
    ("public", b"", True),                                          # never sent a byte: closed at a shutdown
    ("public", get(host="nowhere.localhost"), True),                # answered, between requests
    ("public", b"GET / HT", False),                                 # a head on its way
    ("tls", b"", False),                                            # the PROXY header not in yet
    ("tls", header(), False),                                       # the header in: the request follows
    ("tls", header() + get(), True),                                # answered, between requests
])
def test_what_a_shutdown_may_close_at_once(config, listener, data, idle):
    ex, io = machine(config, listener=listener)
    if data:
        ex.client_data(data)
    if io.named("dispatch"):                # a backend's answer, the connection kept
        ex.backend_ready("web/s", True)
        ex.backend_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert ex.state is not CLOSED and ex.idle is idle

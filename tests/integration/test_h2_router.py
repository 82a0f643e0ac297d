"""HTTP/2 to the router: a client behind a PROXY header that says ALPN h2 (as the terminator
writes it) gets HTTP/2, each stream served by the same exchange machine as HTTP/1.1 (routing,
the 421 check, header rules, the access log), with HTTP/1.1 to the backends over the pool."""
from __future__ import annotations

import json

import pytest

from tests.h2client import H2Client
from tests.helpers import daemon_output
from tests.integration.test_router import Env, header_values, running


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from running(Env(tmp_path_factory.mktemp("h2router")))


def test_streams_are_routed_like_http11_requests(env):
    c = H2Client.to_router(env.proxied)
    r = c.get("coltrane.localhost", "/x?y=1", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2"),
                                                       (b"x-forwarded-for", b"6.6.6.6")])
    assert r.status == 200 and r.ended
    echo = json.loads(r.body)
    assert echo["name"] == "coltrane" and echo["request_line"] == "GET /x?y=1 HTTP/1.1"
    assert header_values(echo, "host") == ["coltrane.localhost"]
    assert header_values(echo, "cookie") == ["a=1; b=2"]          # RFC 9113 8.2.3: crumbs joined
    assert header_values(echo, "X-Forwarded-For") == ["203.0.113.20"]
    assert header_values(echo, "X-Forwarded-Proto") == ["https"]
    assert r.header(b"connection") is None and r.header(b"content-length") == str(len(r.body)).encode()
    c.close()
    # Several streams on the one connection, to several apps (no SNI: no 421 check).
    c = H2Client.to_router(env.proxied, sni=None)
    sids = [c.request("coltrane.localhost", f"/n{i}") for i in range(10)] + [c.request("maps.localhost", "/api/")]
    assert c.wait(lambda: all(c.responses[s].ended for s in sids))
    assert json.loads(c.responses[sids[-1]].body)["name"] == "api"
    assert [json.loads(c.responses[s].body)["request_line"] for s in sids[:3]] == \
        [f"GET /n{i} HTTP/1.1" for i in range(3)]
    c.close()
    assert "GET /x?y=1 HTTP/2.0" in daemon_output(env.proc)


def test_authority_other_than_the_sni_is_421(env):
    c = H2Client.to_router(env.proxied, sni="coltrane.localhost")
    before = env.total_received()
    r = c.get("maps.localhost", "/api/")
    assert r.status == 421 and b"421 Misdirected Request" in r.body
    assert env.total_received() == before
    c.close()


def test_request_bodies_with_and_without_length_and_trailers(env):
    c = H2Client.to_router(env.proxied)
    r = c.get("coltrane.localhost", "/up", method="POST", body=b"x" * 100000,
              headers=[(b"content-length", b"100000")])
    assert r.status == 200 and json.loads(r.body)["body"] == "x" * 100000
    # No length: chunked to the backend; the client's trailers go as chunked trailer fields.
    sid = c.request("coltrane.localhost", "/chunk", method="POST", body=b"hello", end=False)
    c.conn.send_headers(sid, [(b"x-check", b"1")], end_stream=True)
    c.send()
    assert c.wait(lambda: c.responses[sid].ended)
    echo = json.loads(c.responses[sid].body)
    assert echo["body"] == "hello" and header_values(echo, "Transfer-Encoding") == ["chunked"]
    assert ["trailer:x-check", ""] in echo["headers"]
    c.close()


@pytest.mark.parametrize("field", [(b"connection", b"keep-alive"), (b"upgrade", b"websocket"),
                                   (b"transfer-encoding", b"chunked"), (b"te", b"gzip"),
                                   (b"keep-alive", b"5"), (b"x-bad", b"a\x00b")])
def test_connection_specific_fields_are_a_stream_error(env, field):
    c = H2Client.to_router(env.proxied)
    before = env.total_received()
    r = c.get("coltrane.localhost", "/", headers=[field])
    assert r.reset == 1                                 # PROTOCOL_ERROR, on that stream only
    assert c.get("coltrane.localhost", "/").status == 200     # the connection goes on
    assert env.total_received() - before < 2000 and c.goaway is None
    c.close()


def test_response_framings_reach_the_client_as_frames(env):
    c = H2Client.to_router(env.proxied, sni=None)
    r = c.get("scripted.localhost", "/chunked")
    assert r.status == 200 and bytes(r.body) == b"hello world" and r.trailers == [(b"x-t", b"1")]
    r = c.get("scripted.localhost", "/until-close")
    assert r.ended and bytes(r.body) == b"read me until the end"
    r = c.get("scripted.localhost", "/continue")
    assert r.informational and r.status == 201 and bytes(r.body) == b"ok"
    r = c.get("scripted.localhost", "/garbage")
    assert r.status == 502
    c.close()

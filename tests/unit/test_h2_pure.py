"""The pure parts of HTTP/2 to clients: header lists to HTTP/1.1 heads (h2_fields), the machine's
HTTP/1.1 back to HTTP/2 events (h2_response), and the flood budgets (h2_limits)."""
from __future__ import annotations

import pytest

from hpack import NeverIndexedHeaderTuple

from mux_router.h2_fields import Malformed, chunk, last_chunk, request_head, response_fields
from mux_router.h2_limits import Budget, ConnectionLimits, CONTROL_BURST
from mux_router.h2_response import ResponseReader
from mux_router.http1_request import parse_request_head
from mux_router.http1_response import parse_response_head

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/x?y")]


@pytest.mark.parametrize("headers, has_body, head, chunked", [
    (BASE, False, b"GET /x?y HTTP/1.1\r\nhost: a.test\r\n\r\n", False),
    (BASE + [(b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")], False,
     b"GET /x?y HTTP/1.1\r\nhost: a.test\r\naccept: */*\r\ncookie: a=1; b=2\r\n\r\n", False),
    (BASE + [(b"te", b"trailers")], False, b"GET /x?y HTTP/1.1\r\nhost: a.test\r\n\r\n", False),
    (BASE, True, b"GET /x?y HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n", True),
    (BASE + [(b"content-length", b"3")], True, b"GET /x?y HTTP/1.1\r\nhost: a.test\r\ncontent-length: 3\r\n\r\n", False),
    (BASE[:2] + [(b":path", b"/")] + [(b"host", b"h.test")], False, b"GET / HTTP/1.1\r\nhost: h.test\r\n\r\n", False),
    ([(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"*")], False,
     b"OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n", False),
])
def test_request_head(headers, has_body, head, chunked):
    assert request_head(headers, has_body=has_body) == (head, chunked)
    assert parse_request_head(head) is not None         # a head the machine's parser takes


@pytest.mark.parametrize("headers, problem", [
    (BASE + [(b"connection", b"close")], "connection-specific field connection"),
    (BASE + [(b"keep-alive", b"1")], "connection-specific field keep-alive"),
    (BASE + [(b"proxy-connection", b"1")], "connection-specific"),
    (BASE + [(b"transfer-encoding", b"chunked")], "connection-specific"),
    (BASE + [(b"upgrade", b"websocket")], "connection-specific"),
    (BASE + [(b"te", b"gzip")], "TE other than trailers"),
    (BASE + [(b"X-Upper", b"1")], "invalid field name"),
    (BASE + [(b"x-crlf", b"a\r\nx-injected: 1")], "invalid value"),
    (BASE + [(b"x-nul", b"a\x00")], "invalid value"),
    (BASE + [(b"x-space", b" a")], "invalid value"),
    (BASE + [(b"content-length", b"1"), (b"content-length", b"2")], "several Content-Length"),
    (BASE + [(b"host", b"other.test")], ":authority and Host differ"),
    ([(b"accept", b"*/*")] + BASE, "pseudo-header field after a regular one"),
    (BASE + [(b":path", b"/again")], "unknown or repeated"),
    (BASE + [(b"accept", b"x"), (b":path", b"/again")], "pseudo-header field after a regular one"),
    (BASE[:3] + [(b":status", b"200")], "unknown or repeated"),
    (BASE[1:], "missing or invalid :method"),
    ([BASE[0], BASE[2], BASE[3]], ":scheme"),
    (BASE[:3], ":path"),
    (BASE[:3] + [(b":path", b"x")], ":path"),
    (BASE[:3] + [(b":path", b"/a b")], ":path"),
    ([(b":method", b"CONNECT"), (b":authority", b"a:443")], "CONNECT"),
])
def test_malformed_requests(headers, problem):
    with pytest.raises(Malformed, match=problem):
        request_head(headers, has_body=False)


def test_body_chunks_and_trailers():
    assert chunk(b"hello") == b"5\r\nhello\r\n" and chunk(b"") == b""
    assert last_chunk() == b"0\r\n\r\n"
    assert last_chunk([(b"x-sum", b"1")]) == b"0\r\nx-sum: 1\r\n\r\n"
    for bad in ([(b":path", b"/")], [(b"x", b"a\nb")], [(b"connection", b"x")]):
        with pytest.raises(Malformed):
            last_chunk(bad)


def feed_all(method, data, split=1):
    reader = ResponseReader(method)
    events = []
    for i in range(0, len(data), split):
        events += reader.feed(data[i:i + split])
    return reader, events


@pytest.mark.parametrize("split", [1, 7, 10_000])
@pytest.mark.parametrize("method, data, expected", [
    ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nok",
     [("head", [(b":status", b"200"), (b"content-length", b"2"), (b"x-a", b"1")], False), ("data", b"ok", True)]),
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
     [("head", [(b":status", b"200"), (b"content-length", b"5")], True)]),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", [("head", [(b":status", b"204")], True)]),
    ("GET", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
     [("info", [(b":status", b"103"), (b"link", b"</a>")]), ("head", [(b":status", b"200"), (b"content-length", b"0")], True)]),
    ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX-T: 1\r\n\r\n",
     [("head", [(b":status", b"200")], False), ("data", b"ab", False), ("trailers", [(b"x-t", b"1")])]),
    ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
     [("head", [(b":status", b"200")], False), ("data", b"ab", False), ("data", b"", True)]),
])
def test_response_reader(method, data, expected, split):
    reader, events = feed_all(method, data, split)
    merged = []
    for e in events:            # the data of a body split in pieces, joined
        if merged and e[0] == "data" and merged[-1][0] == "data" and not merged[-1][2] and e[1]:
            merged[-1] = ("data", merged[-1][1] + e[1], e[2])
        elif e[0] == "data" and not e[1] and not e[2]:
            continue
        else:
            merged.append(e)
    assert merged == expected and reader.ended


def test_response_framed_by_the_close_ends_when_the_machine_says():
    reader, events = feed_all("GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome", 10_000)
    assert events == [("head", [(b":status", b"200")], False), ("data", b"some", False)] and not reader.ended
    assert reader.finish() == [("data", b"", True)] and reader.ended and reader.finish() == []


def test_budget_refills_at_its_rate():
    b = Budget(3, 1.0, now=0.0)
    assert [b.spend(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.spend(1.0) and not b.spend(1.0)          # one token back per second
    assert b.spend(10.0) and b.spend(10.0) and b.spend(10.0) and not b.spend(10.0)   # never above the burst


def test_connection_limits_say_which_was_exceeded():
    limits = ConnectionLimits(0.0)
    assert all(limits.control(0.0) for _ in range(CONTROL_BURST)) and not limits.control(0.0)
    assert "SETTINGS or PING" in limits.exceeded
    assert all(limits.control(t / 10) for t in range(1, 10 * 60, 2))        # 5 a second for a minute: fine


@pytest.mark.parametrize("field, never_indexed", [
    ((b"Authorization", b"Basic eDp5"), True),
    ((b"Proxy-Authorization", b"Basic eDp5"), True),
    ((b"Cookie", b"a=1"), True),
    ((b"Cookie", b"session=0123456789abcdef"), False),
    ((b"Set-Cookie", b"a=1"), False),
    ((b"X-A", b"1"), False),
])
def test_credentials_in_a_response_are_never_indexed(field, never_indexed):
    """The h2 library's outbound normalization is off (h2_connection): response_fields keeps its
    rule that credentials stay out of the HPACK table."""
    resp, _ = parse_response_head(b"HTTP/1.1 200 OK\r\n%b: %b\r\nContent-Length: 0\r\n\r\n" % field, "GET")
    fields = response_fields(resp)
    assert fields[1] == (field[0].lower(), field[1])
    assert isinstance(fields[1], NeverIndexedHeaderTuple) is never_indexed

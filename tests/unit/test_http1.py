"""mux_router.http1 and its parsers (http1_request, http1_response, chunked): strict request
heads, response heads with their body rules, chunked bodies, and the same verdict however the
bytes are split."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mux_router import http1
from mux_router.chunked import ChunkData, ChunkedDecoder, Trailers
from mux_router.http1 import MAX_FIELDS, MAX_HEAD, MAX_REQUEST_LINE, HttpError, comma_tokens, parse_field_line
from mux_router.http1_request import RequestHeadParser, parse_request_head
from mux_router.http1_response import CHUNKED, CLOSE, LENGTH, NO_BODY, ResponseHeadParser, parse_response_head


def req(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --------------------------------------------------------------------------- valid requests

def test_simple_get():
    raw = req("GET /a/b?x=1 HTTP/1.1", "Host: Maps.Localhost:8080", "Accept: */*")
    head, consumed = parse_request_head(raw + b"next")
    assert consumed == len(raw)
    assert (head.method, head.target, head.version) == ("GET", "/a/b?x=1", "HTTP/1.1")
    assert head.headers == ((b"Host", b"Maps.Localhost:8080"), (b"Accept", b"*/*"))
    assert head.raw == raw
    assert head.host == "maps.localhost" and head.host_as_sent == "Maps.Localhost:8080"
    assert head.path == "/a/b" and head.origin_target == "/a/b?x=1"
    assert head.content_length is None and not head.chunked and not head.has_body
    assert head.keep_alive and not head.is_websocket_upgrade
    assert head.request_line == "GET /a/b?x=1 HTTP/1.1"


VALID = [
    # (description, message, expected attributes)
    ("header whitespace trimmed", req("GET / HTTP/1.1", "Host:  \t h  ", "X-A:b"),
     dict(host="h", headers=((b"Host", b"h"), (b"X-A", b"b")))),
    ("trailing dot and port stripped from host", req("GET / HTTP/1.1", "Host: a.example.:80"), dict(host="a.example")),
    ("IPv6 host literal", req("GET / HTTP/1.1", "Host: [::1]:8080"), dict(host="[::1]")),
    ("empty Host", req("GET / HTTP/1.1", "Host:"), dict(host=None, host_as_sent="")),
    ("content length", req("POST /p HTTP/1.1", "Host: h", "Content-Length: 12"),
     dict(content_length=12, chunked=False)),
    ("repeated identical content length", req("POST / HTTP/1.1", "Host: h", "Content-Length: 5", "content-length: 5"),
     dict(content_length=5)),
    ("content length list of the same value", req("POST / HTTP/1.1", "Host: h", "Content-Length: 5, 5"),
     dict(content_length=5)),
    ("chunked", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: Chunked"), dict(chunked=True)),
    ("HTTP/1.0 without Host closes by default", req("GET / HTTP/1.0"), dict(host=None, keep_alive=False)),
    ("HTTP/1.0 keep-alive", req("GET / HTTP/1.0", "Connection: Keep-Alive"), dict(keep_alive=True)),
    ("HTTP/1.1 close", req("GET / HTTP/1.1", "Host: h", "Connection: foo, close"), dict(keep_alive=False)),
    ("websocket upgrade", req("GET /socket HTTP/1.1", "Host: h", "Connection: keep-alive, Upgrade",
                              "Upgrade: WebSocket", "Sec-WebSocket-Version: 13"),
     dict(is_websocket_upgrade=True)),
    ("upgrade without Connection: upgrade is no upgrade", req("GET / HTTP/1.1", "Host: h", "Upgrade: websocket"),
     dict(is_websocket_upgrade=False)),
    ("POST upgrade is no websocket", req("POST / HTTP/1.1", "Host: h", "Connection: upgrade", "Upgrade: websocket",
                                         "Content-Length: 0"),
     dict(is_websocket_upgrade=False)),
    ("absolute-form target", req("GET http://Maps.localhost/a?b HTTP/1.1", "Host: maps.localhost"),
     dict(host="maps.localhost", path="/a", origin_target="/a?b")),
    ("absolute-form without path", req("GET https://h:8443 HTTP/1.1", "Host: h:8443"),
     dict(host="h", origin_target="/", host_as_sent="h:8443")),
    ("OPTIONS * is judged as the root and forwarded as *", req("OPTIONS * HTTP/1.1", "Host: h"),
     dict(path="/", origin_target="/", forward_target="*")),
    ("absolute-form with a query and no path", req("GET http://admin.example.com?x HTTP/1.1", "Host: admin.example.com"),
     dict(host="admin.example.com", path="/", origin_target="/?x", forward_target="http://admin.example.com/?x")),
    ("absolute-form path normalised", req("GET http://h//x/../%61dmin?q=/../ HTTP/1.1", "Host: h"),
     dict(path="/admin", origin_target="/admin?q=/../", forward_target="http://h/admin?q=/../")),
    ("origin-form path normalised, query as sent", req("GET /x/./..//%61dmin/?a=%2f HTTP/1.1", "Host: h"),
     dict(target="/x/./..//%61dmin/?a=%2f", path="/admin/", origin_target="/admin/?a=%2f",
          forward_target="/admin/?a=%2f")),
    ("a normal target is forwarded as sent", req("GET /a/b?c HTTP/1.1", "Host: h"), dict(forward_target="/a/b?c")),
    ("leading empty lines skipped", b"\r\n\r\n" + req("GET / HTTP/1.1", "Host: h"), dict(method="GET")),
    ("obs-text in a value", req("GET / HTTP/1.1", "Host: h", "X: caf\xe9"), dict(headers=((b"Host", b"h"), (b"X", b"caf\xe9")))),
    ("tab inside a value", req("GET / HTTP/1.1", "Host: h", "X: a\tb"), dict(headers=((b"Host", b"h"), (b"X", b"a\tb")))),
    ("odd but valid method token", req("M-SEARCH / HTTP/1.1", "Host: h"), dict(method="M-SEARCH")),
]


@pytest.mark.parametrize("what,raw,expected", VALID, ids=[v[0] for v in VALID])
def test_valid_requests(what, raw, expected):
    result = parse_request_head(raw)
    assert result is not None, what
    head, consumed = result
    assert consumed == len(raw)
    for name, value in expected.items():
        assert getattr(head, name) == value, (what, name)


# --------------------------------------------------------------------------- invalid requests

INVALID = [
    ("fragment", req("GET /x#frag HTTP/1.1", "Host: h"), 400),
    ("dot-segment above the root", req("GET /x/../../admin HTTP/1.1", "Host: h"), 400),
    ("encoded slash", req("GET /admin%2f.. HTTP/1.1", "Host: h"), 400),
    ("encoded backslash", req("GET /x%5C..%5Cadmin HTTP/1.1", "Host: h"), 400),
    ("raw backslash", req("GET /x\\..\\admin HTTP/1.1", "Host: h"), 400),
    ("encoded NUL", req("GET /admin%00.html HTTP/1.1", "Host: h"), 400),
    ("absolute-form above the root", req("GET http://h/../admin HTTP/1.1", "Host: h"), 400),
    ("CL and TE", req("POST / HTTP/1.1", "Host: h", "Content-Length: 3", "Transfer-Encoding: chunked"), 400),
    ("TE and CL", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: chunked", "Content-Length: 3"), 400),
    ("differing CL", req("POST / HTTP/1.1", "Host: h", "Content-Length: 3", "Content-Length: 4"), 400),
    ("differing CL list", req("POST / HTTP/1.1", "Host: h", "Content-Length: 3, 4"), 400),
    ("negative CL", req("POST / HTTP/1.1", "Host: h", "Content-Length: -1"), 400),
    ("CL with sign", req("POST / HTTP/1.1", "Host: h", "Content-Length: +1"), 400),
    ("CL hex", req("POST / HTTP/1.1", "Host: h", "Content-Length: 0x10"), 400),
    ("CL empty", req("POST / HTTP/1.1", "Host: h", "Content-Length:"), 400),
    ("CL huge", req("POST / HTTP/1.1", "Host: h", "Content-Length: 1" + "0" * 30), 400),
    ("TE not chunked", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: gzip"), 400),
    ("TE chunked not final", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: chunked, gzip"), 400),
    ("TE chunked twice", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 400),
    ("TE misspelt", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: xchunked"), 400),
    ("TE with quotes", req("POST / HTTP/1.1", "Host: h", 'Transfer-Encoding: "chunked"'), 400),
    ("TE empty", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding:"), 400),
    ("TE other coding before chunked", req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: gzip, chunked"), 501),
    ("HTTP/1.0 with TE", req("POST / HTTP/1.0", "Transfer-Encoding: chunked"), 400),
    ("TE look-alike with underscore", req("POST / HTTP/1.1", "Host: h", "Transfer_Encoding: chunked"), 400),
    ("CL look-alike with underscore", req("POST / HTTP/1.1", "Host: h", "content_LENGTH: 5"), 400),
    ("CL look-alike with underscore", req("POST / HTTP/1.1", "Host: h", "content_length: 5"), 400),
    ("Host look-alike with underscore", req("GET / HTTP/1.1", "Host: h", "HOST_: x", "Ho_st: x"), None),
    ("obs-fold", req("GET / HTTP/1.1", "Host: h", "X-A: b", " c"), 400),
    ("obs-fold with tab", req("GET / HTTP/1.1", "Host: h", "X-A: b", "\tc"), 400),
    ("first header line folded", req("GET / HTTP/1.1", " Host: h"), 400),
    ("space before colon", req("GET / HTTP/1.1", "Host : h"), 400),
    ("tab before colon", req("GET / HTTP/1.1", "Host\t: h"), 400),
    ("no colon", req("GET / HTTP/1.1", "Host: h", "Nocolon"), 400),
    ("empty name", req("GET / HTTP/1.1", "Host: h", ": v"), 400),
    ("bad name char", req("GET / HTTP/1.1", "Host: h", "X(a): v"), 400),
    ("non-ascii name", req("GET / HTTP/1.1", "Host: h", "X\xe9: v"), 400),
    ("NUL in value", req("GET / HTTP/1.1", "Host: h", "X: a\x00b"), 400),
    ("bare CR in value", req("GET / HTTP/1.1", "Host: h", "X: a\rb"), 400),
    ("DEL in value", req("GET / HTTP/1.1", "Host: h", "X: a\x7fb"), 400),
    ("escape in value", req("GET / HTTP/1.1", "Host: h", "X: a\x1bb"), 400),
    ("bare LF line ending", b"GET / HTTP/1.1\nHost: h\n\n", 400),
    ("bare LF in header section", b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400),
    ("missing Host", req("GET / HTTP/1.1", "Accept: */*"), 400),
    ("two Host headers", req("GET / HTTP/1.1", "Host: a", "Host: a"), 400),
    ("two Host headers, HTTP/1.0", req("GET / HTTP/1.0", "Host: a", "Host: b"), 400),
    ("Host with a space", req("GET / HTTP/1.1", "Host: a b"), 400),
    ("Host with userinfo", req("GET / HTTP/1.1", "Host: u@a"), 400),
    ("Host with a slash", req("GET / HTTP/1.1", "Host: a/b"), 400),
    ("absolute-form host differs from Host", req("GET http://a/ HTTP/1.1", "Host: b"), 400),
    ("lowercase method is still a token", req("get / HTTP/1.1", "Host: h"), None),
    ("two spaces in request line", req("GET  / HTTP/1.1", "Host: h"), 400),
    ("tab in request line", req("GET\t/ HTTP/1.1", "Host: h"), 400),
    ("trailing space in request line", req("GET / HTTP/1.1 ", "Host: h"), 400),
    ("HTTP/0.9 style", req("GET /"), 400),
    ("no version", req("GET / ", "Host: h"), 400),
    ("lowercase version", req("GET / http/1.1", "Host: h"), 400),
    ("target without slash", req("GET a HTTP/1.1", "Host: h"), 400),
    ("asterisk with GET", req("GET * HTTP/1.1", "Host: h"), 400),
    ("control char in target", req("GET /\x01 HTTP/1.1", "Host: h"), 400),
    ("non-ascii target", req("GET /\xe9 HTTP/1.1", "Host: h"), 400),
    ("empty request line", b"\r\n" * 9 + req("GET / HTTP/1.1", "Host: h"), 400),
    ("method with bad char", req("GE(T / HTTP/1.1", "Host: h"), 400),
    ("CONNECT", req("CONNECT h:443 HTTP/1.1", "Host: h:443"), 501),
    ("HTTP/2.0", req("GET / HTTP/2.0", "Host: h"), 505),
    ("HTTP/1.2", req("GET / HTTP/1.2", "Host: h"), 505),
    ("HTTP/0.9 version", req("GET / HTTP/0.9", "Host: h"), 505),
    ("PROXY v2 signature", b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + b"\x7f\x00\x00\x01" * 2 + b"\x00\x50\x00\x50", 400),
    ("PROXY v1 line", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + req("GET / HTTP/1.1", "Host: h"), 400),
    ("TLS handshake bytes", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\r\n", 400),
    ("request line too long", req("GET /" + "a" * MAX_REQUEST_LINE + " HTTP/1.1", "Host: h"), 414),
    ("head too large", req("GET / HTTP/1.1", "Host: h", *[f"X-{i}: " + "v" * 1000 for i in range(40)]), 431),
    ("too many headers", req("GET / HTTP/1.1", "Host: h", *[f"X-{i}: v" for i in range(MAX_FIELDS)]), 431),
]


@pytest.mark.parametrize("what,raw,status", INVALID, ids=[v[0] for v in INVALID])
def test_invalid_requests(what, raw, status):
    if status is None:
        assert parse_request_head(raw) is not None
        return
    with pytest.raises(HttpError) as e:
        parse_request_head(raw)
    assert e.value.status == status, (what, e.value)


def test_limits_are_exact():
    line = "GET /" + "a" * (MAX_REQUEST_LINE - len("GET / HTTP/1.1")) + " HTTP/1.1"
    assert len(line) == MAX_REQUEST_LINE
    assert parse_request_head(req(line, "Host: h")) is not None
    with pytest.raises(HttpError) as e:
        parse_request_head(req(line.replace("/", "/a", 1), "Host: h"))
    assert e.value.status == 414
    fields = [f"X-{i}: v" for i in range(MAX_FIELDS - 1)]
    assert parse_request_head(req("GET / HTTP/1.1", "Host: h", *fields)) is not None
    head = req("GET / HTTP/1.1", "Host: h")
    filler = "X: " + "v" * (MAX_HEAD - len(head) - len("X: ") - 2)
    exact = req("GET / HTTP/1.1", "Host: h", filler)
    assert len(exact) == MAX_HEAD and parse_request_head(exact) is not None
    with pytest.raises(HttpError) as e:
        parse_request_head(req("GET / HTTP/1.1", "Host: h", filler + "v"))
    assert e.value.status == 431


def test_incomplete_heads_need_more_and_bad_ones_fail_early():
    assert parse_request_head(b"") is None
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n") is None
    assert parse_request_head(b"\r\n\r") is None
    # A bad request line is refused before the rest of the head arrives...
    with pytest.raises(HttpError):
        parse_request_head(b"GET / HTTP/1.1 x\r\n")
    # ...and so is a bad header line, and a line that can only become too long.
    with pytest.raises(HttpError):
        parse_request_head(b"GET / HTTP/1.1\r\nHost : h\r\n")
    with pytest.raises(HttpError) as e:
        parse_request_head(b"GET /" + b"a" * (MAX_REQUEST_LINE + 10))
    assert e.value.status == 414
    with pytest.raises(HttpError) as e:
        parse_request_head(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD)
    assert e.value.status == 431


def test_parser_leftover_is_the_next_request():
    parser = RequestHeadParser()
    first = req("POST / HTTP/1.1", "Host: h", "Content-Length: 3")
    assert parser.feed(first[:10]) is None
    head = parser.feed(first[10:] + b"abcGET")
    assert head.content_length == 3 and parser.leftover == b"abcGET"


def test_helpers():
    assert comma_tokens([b"a, B ,,c", b" d"]) == [b"a", b"b", b"c", b"d"]


# --------------------------------------------------------------------------- responses

RESPONSES = [
    # (message, request method, body kind, content_length, keep_alive)
    (req("HTTP/1.1 200 OK", "Content-Length: 5"), "GET", LENGTH, 5, True),
    (req("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"), "GET", CHUNKED, None, True),
    (req("HTTP/1.1 200 OK"), "GET", CLOSE, None, False),
    (req("HTTP/1.1 200 OK", "Transfer-Encoding: gzip"), "GET", CLOSE, None, False),
    (req("HTTP/1.1 200 OK", "Content-Length: 5"), "HEAD", NO_BODY, None, True),
    (req("HTTP/1.1 204 No Content"), "GET", NO_BODY, None, True),
    (req("HTTP/1.1 304 Not Modified", "Content-Length: 99"), "GET", NO_BODY, None, True),
    (req("HTTP/1.1 100 Continue"), "POST", NO_BODY, None, True),
    (req("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"), "GET", NO_BODY, None, True),
    (req("HTTP/1.0 200 OK", "Content-Length: 1"), "GET", LENGTH, 1, False),
    (req("HTTP/1.0 200 OK", "Content-Length: 1", "Connection: keep-alive"), "GET", LENGTH, 1, True),
    (req("HTTP/1.1 200 OK", "Content-Length: 1", "Connection: close"), "GET", LENGTH, 1, False),
    (req("HTTP/1.1 200"), "GET", CLOSE, None, False),
    (req("HTTP/1.1 404 "), "GET", CLOSE, None, False),
]


@pytest.mark.parametrize("raw,method,body,length,keep", RESPONSES)
def test_response_body_rules(raw, method, body, length, keep):
    resp, consumed = parse_response_head(raw + b"rest", method)
    assert consumed == len(raw)
    assert (resp.body, resp.content_length, resp.keep_alive) == (body, length, keep)


def test_response_fields():
    resp, _ = parse_response_head(req("HTTP/1.1 404 Not Found", "X-A: b"))
    assert (resp.version, resp.status, resp.reason, resp.headers) == ("HTTP/1.1", 404, "Not Found", ((b"X-A", b"b"),))
    assert not resp.informational


@pytest.mark.parametrize("raw", [
    req("HTTP/1.1 200 OK", "Content-Length: 1", "Transfer-Encoding: chunked"),
    req("HTTP/1.1 200 OK", "Content-Length: 1", "Content-Length: 2"),
    req("HTTP/1.1 200 OK", "Content-Length: x"),
    req("HTTP/1.1 2000 OK"),
    req("HTTP/1.1 OK"),
    req("HTTP/2 200 OK"),
    req("HTTP/2.0 200 OK"),
    req("ICY 200 OK"),
    req("HTTP/1.1 200 OK", "X : y"),
    req("HTTP/1.1 200 OK", "X: a", " folded"),
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
])
def test_bad_responses_are_502(raw):
    with pytest.raises(HttpError) as e:
        parse_response_head(raw)
    assert e.value.status == 502


def test_response_parser_needs_more():
    parser = ResponseHeadParser("GET")
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-") is None
    resp = parser.feed(b"Length: 2\r\n\r\nhi")
    assert resp.content_length == 2 and parser.leftover == b"hi"


# --------------------------------------------------------------------------- chunked bodies

def decode_all(raw: bytes, pieces: list[bytes] | None = None) -> tuple[bytes, tuple, int, bool]:
    """(data, trailers, consumed, done) or raises HttpError."""
    decoder = ChunkedDecoder()
    data, trailers, consumed = b"", (), 0
    for piece in pieces if pieces is not None else [raw]:
        events, used = decoder.feed(piece)
        consumed += used
        for ev in events:
            if isinstance(ev, ChunkData):
                data += ev.data
            else:
                trailers = ev.headers
        if decoder.done:
            break
    return data, trailers, consumed, decoder.done


CHUNKED_VALID = [
    (b"0\r\n\r\n", b"", ()),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", ()),
    (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", ()),
    (b"000A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", ()),
    (b"a;name=value;flag\r\n0123456789\r\n0\r\n\r\n", b"0123456789", ()),
    (b'3 ; q="a \\"b\\"" \t;x\r\nabc\r\n0\r\n\r\n', b"abc", ()),
    (b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n", b"abc", ((b"X-Sum", b"1"), (b"Y", b"2"))),
]


@pytest.mark.parametrize("raw,data,trailers", CHUNKED_VALID)
def test_chunked_valid(raw, data, trailers):
    assert decode_all(raw + b"GET / HTTP/1.1") == (data, trailers, len(raw), True)


CHUNKED_INVALID = [
    b"\r\n",                          # no size
    b"x\r\n",                         # not hex
    b"-1\r\n",
    b"+1\r\na\r\n0\r\n\r\n",
    b" 1\r\na\r\n0\r\n\r\n",          # leading whitespace
    b"1 \r\na\r\n0\r\n\r\n",          # trailing whitespace without an extension
    b"0x1\r\na\r\n0\r\n\r\n",
    b"1" * 17 + b"\r\n",              # more than 16 hex digits
    b"1;\r\na\r\n0\r\n\r\n",          # empty extension name
    b"1;a=\"x\r\na\r\n0\r\n\r\n",     # unterminated quoted string
    b"1\na\r\n0\r\n\r\n",             # bare LF after the size
    b"1\r\naX\r\n0\r\n\r\n",          # data longer than announced
    b"2\r\na\r\n0\r\n\r\n",           # data shorter than announced (CRLF eaten as data, then '0\r' ...)
    b"1\r\na\n0\r\n\r\n",             # bare LF after data
    b"1\r\na\r\n0\r\nX : y\r\n\r\n",  # bad trailer
    b"1\r\na\r\n0\r\nX: y\n\r\n",     # bare LF in trailers
    b"1\r\na\r\n0\r\n y\r\n\r\n",     # folded trailer
    b"1;" + b"a" * 5000 + b"\r\n",    # size line too long
]


@pytest.mark.parametrize("raw", CHUNKED_INVALID)
def test_chunked_invalid(raw):
    with pytest.raises(HttpError) as e:
        decode_all(raw)
    assert e.value.status == 400


def test_chunked_error_status_is_configurable_and_incomplete_is_not_done():
    with pytest.raises(HttpError) as e:
        ChunkedDecoder(error_status=502).feed(b"zz\r\n")
    assert e.value.status == 502
    decoder = ChunkedDecoder()
    events, used = decoder.feed(b"5\r\nhel")
    assert events == [ChunkData(b"hel")] and used == 6 and not decoder.done
    events, used = decoder.feed(b"lo\r\n0\r\n\r\nNEXT")
    assert events == [ChunkData(b"lo")] and used == 9 and decoder.done and decoder.body_bytes == 5
    assert decoder.feed(b"more") == ([], 0)


def test_chunked_trailer_event():
    decoder = ChunkedDecoder()
    events, _ = decoder.feed(b"0\r\nA: b\r\n\r\n")
    assert events == [Trailers(((b"A", b"b"),))]


# --------------------------------------------------------------------------- any split, same result

def request_outcome(raw: bytes, pieces: list[bytes], **limits):
    """Feed the pieces one by one; the head's attributes, consumed count and leftover, or the error."""
    parser = RequestHeadParser(**limits)
    try:
        for piece in pieces:
            head = parser.feed(piece)
            if head is not None:
                return ("head", head, parser.consumed)
        return ("incomplete",)
    except HttpError as e:
        return ("error", e.status, e.reason)


def response_outcome(raw: bytes, pieces: list[bytes]):
    parser = ResponseHeadParser("GET")
    try:
        for piece in pieces:
            resp = parser.feed(piece)
            if resp is not None:
                return ("head", resp, parser.consumed)
        return ("incomplete",)
    except HttpError as e:
        return ("error", e.status, e.reason)


def chunked_outcome(pieces: list[bytes]):
    try:
        return ("ok", decode_all(b"", pieces))
    except HttpError as e:
        return ("error", e.status, e.reason)


@st.composite
def splits(draw, raw: bytes):
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    bounds = [0, *cuts, len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:])]


_GOOD_FIELDS = st.sampled_from([("Host", "h"), ("Content-Length", "5"), ("Transfer-Encoding", "chunked"),
                                 ("Connection", "close"), ("Connection", "upgrade"), ("Upgrade", "websocket"),
                                 ("X-Forwarded-For", "1.2.3.4"), ("Accept", "*/*"), ("X-Long", "x" * 40),
                                 ("X-Obs", "caf\xe9")])
_BAD_FIELDS = st.sampled_from([("Host ", "h"), (" Folded", "x"), ("X(bad)", "v"), ("X", "a\rb"), ("X", "a\x00b"),
                                ("Content-Length", "5, 6"), ("Transfer-Encoding", "gzip, chunked"), ("Host", "a b")])
_FIELD_NAMES = st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection", "X-Long", "Host "])
_FIELD_VALUES = st.sampled_from(["h", "5", "5, 6", "chunked", "close", "", "a\rb", "x" * 40])
_LINE_ENDS = st.sampled_from(["\r\n"] * 12 + ["\n", "\r"])


@st.composite
def request_bytes(draw):
    """Mostly valid requests (so that heads are parsed too), some with one defect in one place."""
    defect = draw(st.sampled_from([None] * 4 + ["line", "field", "ending", "end"]))
    method = draw(st.sampled_from(["GET", "POST", "OPTIONS"]))
    target = draw(st.sampled_from(["/", "/a?b=1", "http://h/x", "/" + "p" * 60]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    if defect == "line":
        method, target, version = draw(st.sampled_from([
            ("G(T", target, version), ("CONNECT", "h:1", version), (method, "a", version), (method, "/\x01", version),
            (method, target, "HTTP/2.0"), (method, target, "http/1.1"), ("", target, version)]))
    fields = [("Host", "h")] + draw(st.lists(_GOOD_FIELDS, max_size=6))
    if defect == "field":
        fields.insert(draw(st.integers(0, len(fields))), draw(_BAD_FIELDS))
    ends = ["\r\n"] * (len(fields) + 2)
    if defect == "ending":
        ends[draw(st.integers(0, len(ends) - 1))] = draw(st.sampled_from(["\n", "\r"]))
    out = "\r\n" * draw(st.integers(0, 2)) + f"{method} {target} {version}" + ends[0]
    for (name, value), end in zip(fields, ends[1:]):
        out += f"{name}:{draw(st.sampled_from(['', ' ', '  ']))}{value}{end}"
    out += ends[-1] if defect != "end" else ""
    return (out + draw(st.sampled_from(["", "body", "GET / HTTP/1.1\r\n"]))).encode("latin-1")


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_request_head_same_result_for_any_split(data):
    raw = data.draw(request_bytes())
    # Small limits so that the size checks are exercised by short messages too.
    limits = data.draw(st.sampled_from([{}, dict(max_line=20, max_head=120, max_fields=4)]))
    whole = request_outcome(raw, [raw], **limits)
    assert request_outcome(raw, data.draw(splits(raw)), **limits) == whole
    assert request_outcome(raw, [bytes([b]) for b in raw], **limits) == whole


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fields_read_from_the_raw_head_are_the_scanned_lines(data):
    """A head's `headers` are read from its raw bytes when asked: they must be what the scanner's
    own field-line parser makes of each line, whichever path (one match or the scanner) took it."""
    raw = data.draw(request_bytes())
    outcome = request_outcome(raw, [raw])
    if outcome[0] != "head":
        return
    head = outcome[1]
    lines = head.raw.split(b"\r\n")[1:-2]         # between the request line and the empty line
    assert head.headers == tuple(parse_field_line(line) for line in lines)
    status_raw = b"HTTP/1.1 200 OK" + head.raw[head.raw.index(b"\r\n"):]
    resp = response_outcome(status_raw, [status_raw])
    assert resp[0] == "error" or resp[1].headers == head.headers


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_bytes_same_result_for_any_split(data):
    raw = data.draw(st.binary(max_size=200) | st.text(alphabet="GET /HTP1.\r\n:hos", max_size=200).map(str.encode))
    limits = dict(max_line=30, max_head=80, max_fields=3)
    assert request_outcome(raw, data.draw(splits(raw)), **limits) == request_outcome(raw, [raw], **limits)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_response_head_same_result_for_any_split(data):
    status = data.draw(st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 204", "HTTP/1.0 101 x", "HTTP/1.1 20 x", "HTTP/3.0 200 OK"]))
    raw = status + data.draw(_LINE_ENDS)
    for _ in range(data.draw(st.integers(0, 5))):
        raw += f"{data.draw(_FIELD_NAMES)}: {data.draw(_FIELD_VALUES)}{data.draw(_LINE_ENDS)}"
    raw = (raw + "\r\n" + data.draw(st.sampled_from(["", "body"]))).encode("latin-1")
    assert response_outcome(raw, data.draw(splits(raw))) == response_outcome(raw, [raw])


@st.composite
def chunked_bytes(draw):
    out = b""
    broken = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        payload = draw(st.binary(max_size=40))
        size = len(payload)
        ext = draw(st.sampled_from([b"", b"", b";a=b", b';q="x y"']))
        end = b"\r\n"
        if broken:
            size = draw(st.sampled_from([size, size + 1, max(size - 1, 0)]))
            ext = draw(st.sampled_from([ext, b"; bad", b" "]))
            end = draw(st.sampled_from([end, b"\n"]))
        out += b"%x" % size + ext + end + payload + b"\r\n"
    out += b"0\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from([b"X-Sum: 1\r\n"] + ([b"Bad : 1\r\n", b"Y: a\x00\r\n"] if broken else [])))
    return out + b"\r\n" + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n"]))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_chunked_same_result_for_any_split(data):
    raw = data.draw(chunked_bytes() | st.binary(max_size=100))
    whole = chunked_outcome([raw])
    assert chunked_outcome(data.draw(splits(raw))) == whole
    assert chunked_outcome([bytes([b]) for b in raw]) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=50), max_size=6), st.data())
def test_chunked_roundtrip(chunks, data):
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    assert decode_all(b"", data.draw(splits(encoded + b"tail"))) == (b"".join(chunks), (), len(encoded), True)


# The whole-head shortcut (_HeadParser._whole) must take exactly the heads the byte scanner takes,
# with the same result, and leave every verdict on the others to the scanner.
WHOLE_HEAD_CASES = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",                       # leading empty line
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\nx HTTP/1.1\r\nHost: a\r\n\r\n",                        # bare LF in the request line
    b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",                     # bare LF between fields
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",               # obs-fold
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",                          # space before the colon
    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",                        # bare CR in a value
    b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",                       # NUL in a value
    b"GET / HTTP/1.1\r\nHost: a\r\nX:\t v \t\r\nY:\r\n\r\nBODY",   # OWS trimmed, empty value
    b"GET / HTTP/1.1\r\nHost: a\r\n: nameless\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x80\xff\r\n\r\n",                   # obs-text
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(MAX_FIELDS)) + b"Host: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(MAX_FIELDS - 2)) + b"Host: a\r\n\r\n",
    b"GET /" + b"a" * (MAX_REQUEST_LINE - 14) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
    b"BAD\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a \r\nX: b  c\r\nY: d\t\r\n\r\n",          # trailing OWS on some values only
    b"GET / HTTP/1.1\r\nHost: a\r\n\nX: b\r\n\r\n",                     # an empty line ending in a bare LF
    b"GET / HTTP/1.1\r\nHost: a\r\r\nX: b\r\n\r\n",                     # CR before the CRLF
    b"GET / HTTP/1.1\r\nX: b\r\nHost: a\nhost: c\r\n\r\n",              # a second Host after a bare LF
]


@pytest.mark.parametrize("raw", WHOLE_HEAD_CASES)
def test_whole_head_shortcut_agrees_with_the_byte_scanner(raw):
    assert request_outcome(raw, [raw]) == request_outcome(raw, [bytes([b]) for b in raw])
    status_raw = raw.replace(b"GET / HTTP/1.1", b"HTTP/1.1 200 OK", 1).replace(b"GET / HTTP/1.0", b"HTTP/1.0 204 No", 1)
    assert response_outcome(status_raw, [status_raw]) == response_outcome(status_raw, [bytes([b]) for b in status_raw])


def test_memo_is_bounded_and_keeps_no_refusal():
    calls = []

    def double(x: int) -> int:
        calls.append(x)
        if x < 0:
            raise ValueError(x)
        return 2 * x

    memo = http1.Memo(double, size=3)
    assert [memo[1], memo[1], memo[2]] == [2, 2, 4] and calls == [1, 2]
    for _ in range(2):
        with pytest.raises(ValueError):
            memo[-1]
    assert calls == [1, 2, -1, -1] and -1 not in memo
    for x in range(3, 10):
        memo[x]
    assert len(memo) <= 3 and memo[9] == 18


def test_an_invalid_host_is_refused_every_time():
    raw = req("GET / HTTP/1.1", "Host: a b")
    for _ in range(2):
        with pytest.raises(HttpError) as e:
            parse_request_head(raw)
        assert (e.value.status, e.value.reason) == (400, "invalid Host header")


# A head parsed again (there is no memo of heads: each parse is its own) gives the same outcome,
# whatever came before it.

def test_a_repeated_head_parses_the_same_with_its_own_leftover():
    raw = b"GET /memo HTTP/1.1\r\nHost: memo.example\r\nX-Seen: twice\r\n\r\n"
    first = parse_request_head(raw + b"BODY")
    parser = RequestHeadParser()
    again = parser.feed(raw + b"NEXT")
    assert again == first[0] and parser.consumed == first[1] == len(raw) and parser.leftover == b"NEXT"


def test_a_head_accepted_before_is_judged_again_with_smaller_limits():
    raw = b"GET /memo-limits HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 5 + b"\r\n"
    assert parse_request_head(raw) is not None            # accepted, and kept, with the default limits
    with pytest.raises(HttpError) as e:
        parse_request_head(raw, max_fields=4)
    assert e.value.status == 431
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X: y\r\n" * 5 + b"\r\n"
    assert parse_response_head(resp) is not None
    with pytest.raises(HttpError):
        parse_response_head(resp, max_fields=4)


def test_a_response_to_head_is_framed_apart_from_one_to_get():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Memo: get-or-head\r\n\r\n"
    for method, body in (("GET", LENGTH), ("HEAD", NO_BODY), ("GET", LENGTH), ("HEAD", NO_BODY)):
        assert parse_response_head(raw, method)[0].body == body


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_head_parsed_again_gives_the_scanners_outcome(data):
    """A whole head fed twice and the same bytes fed byte by byte give one outcome."""
    raw = data.draw(request_bytes())
    by_bytes = request_outcome(raw, [bytes([b]) for b in raw])
    assert request_outcome(raw, [raw]) == by_bytes
    assert request_outcome(raw, [raw]) == by_bytes


@pytest.mark.parametrize("fields,end_to_end", [
    # (the response's field lines, what is left of its head for the client)
    ([], b"HTTP/1.1 204 No Content"),
    (["Connection: keep-alive", "Content-Length: 0"], b"HTTP/1.1 204 No Content\r\nContent-Length: 0"),
    (["KEEP-ALIVE: timeout=5", "Transfer-Encoding: chunked ", "TE: trailers", "Upgrade: h2c", "X: 1"],
     b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked \r\nX: 1"),
    (["Proxy-Connection: close", "connection: close", "Connection: x-y", "HTTP2-Settings: AAA", "Test: te"],
     b"HTTP/1.1 204 No Content\r\nTest: te"),
])
def test_response_end_to_end_is_the_head_without_its_hop_by_hop_lines(fields, end_to_end):
    head = b"\r\n".join([b"HTTP/1.1 204 No Content", *(f.encode() for f in fields)]) + b"\r\n\r\n"
    resp = ResponseHeadParser("GET").feed(head)
    assert resp.end_to_end == end_to_end
    assert (resp.raw, resp.body) == (head, NO_BODY)

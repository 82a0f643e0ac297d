"""Request smuggling battery through the whole pipeline (both listeners) to a raw recording backend.

Each case is sent as raw bytes. The backend records every byte of every connection and answers a
fixed 200. For each case either the router refuses it (the listed 4xx/5xx) and NOTHING reaches the
backend, or (valid-but-odd cases) every backend connection carries exactly one request framed
unambiguously, checked here by an independent strict reader: one framing header, canonical
`Transfer-Encoding: chunked`, no look-alike framing header names, no byte after the message's end.
"""
from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

import pytest

from tests.helpers import wait_until
from tests.pipeline import RecordingBackend, running_pipeline

HOST = "raw.localhost"
H = f"Host: {HOST}"
C = "Connection: close"
REJECT, FORWARD, EITHER = "reject", "forward", "either"


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    expect: str = REJECT
    statuses: tuple[int, ...] = (400,)   # for REJECT (and the reject side of EITHER)
    requests: int = 1                    # for FORWARD: how many requests reach the backend
    body_error: bool = False             # the head is valid, the body's framing is not
    bug: str = ""                        # a known router bug: the case is a strict xfail


def msg(*lines: str, body: bytes | str = b"", start: str = "POST / HTTP/1.1") -> bytes:
    """A request from its start line and field lines; CRLF everywhere unless a line carries its own
    line ending tricks (they are written into the strings)."""
    head = "\r\n".join([start, *lines]) + "\r\n\r\n"
    return head.encode("latin-1") + (body.encode("latin-1") if isinstance(body, str) else body)


# Known router bugs: Case(..., bug="BUG: ...") makes a case a strict xfail (none at the moment).

SMUGGLED = f"GET /smuggled HTTP/1.1\r\n{H}\r\n\r\n"
CHUNKED_HELLO = "5\r\nhello\r\n0\r\n\r\n"
TE = "Transfer-Encoding: chunked"


def chunked(*lines: str, body: str) -> bytes:
    return msg(H, C, *lines, body=body)


CASES = [
    # ---- CL.TE / TE.CL: both framing headers, in either order, with a request hidden in the body
    Case("cl-te", msg(H, C, "Content-Length: 6", TE, body="0\r\n\r\nX")),
    Case("te-cl", msg(H, C, TE, "Content-Length: 3", body="8\r\nSMUGGLED\r\n0\r\n\r\n")),
    Case("cl0-te-smuggle", msg(H, C, "Content-Length: 0", TE, body="0\r\n\r\n" + SMUGGLED)),
    Case("te-cl-smuggle", msg(H, C, TE, "Content-Length: 4", body="5c\r\n" + SMUGGLED + "\r\n0\r\n\r\n")),
    Case("cl-te-http10", msg(H, C, "Content-Length: 5", TE, body=CHUNKED_HELLO, start="POST / HTTP/1.0")),
    # ---- TE.TE: obfuscated Transfer-Encoding that one parser honours and another ignores
    Case("te-xchunked", msg(H, C, "Transfer-Encoding: xchunked", "Content-Length: 5", body="hello"), statuses=(400, 501)),
    Case("te-space-before-colon", msg(H, C, "Transfer-Encoding : chunked", body=CHUNKED_HELLO)),
    Case("te-chunked-then-x", msg(H, C, TE, "Transfer-Encoding: x", body=CHUNKED_HELLO), statuses=(400, 501)),
    Case("te-x-then-chunked", msg(H, C, "Transfer-Encoding: x", TE, body=CHUNKED_HELLO), statuses=(400, 501)),
    Case("te-obs-fold", msg(H, C, "Transfer-Encoding:", " chunked", body=CHUNKED_HELLO)),
    Case("te-chunked-twice", msg(H, C, "Transfer-Encoding: chunked, chunked", body=CHUNKED_HELLO)),
    Case("te-identity-chunked", msg(H, C, "Transfer-Encoding: identity, chunked", body=CHUNKED_HELLO), statuses=(400, 501)),
    Case("te-gzip-chunked", msg(H, C, "Transfer-Encoding: gzip, chunked", body=CHUNKED_HELLO), statuses=(400, 501)),
    Case("te-quoted", msg(H, C, 'Transfer-Encoding: "chunked"', body=CHUNKED_HELLO), statuses=(400, 501)),
    Case("te-nul", msg(H, C, "Transfer-Encoding: chunked\x00", body=CHUNKED_HELLO)),
    Case("te-vtab", msg(H, C, "Transfer-Encoding: chunk\x0bed", body=CHUNKED_HELLO)),
    Case("te-bare-cr", msg(H, C, "Transfer-Encoding: chunked\rX: y", body=CHUNKED_HELLO)),
    Case("te-bare-lf-in-name", msg(H, C, "Transfer-Encoding\n: chunked", body=CHUNKED_HELLO)),
    Case("te-params", msg(H, C, "Transfer-Encoding: chunked;q=1", body=CHUNKED_HELLO), statuses=(400, 501)),
    Case("te-empty-with-cl", msg(H, C, "Transfer-Encoding: ", "Content-Length: 5", body="hello"), statuses=(400, 501)),
    Case("te-nbsp-prefix", msg(H, C, "Transfer-Encoding: \xa0chunked", body=CHUNKED_HELLO), statuses=(400, 501)),
    Case("te-in-http10", msg(H, C, TE, body=CHUNKED_HELLO, start="POST / HTTP/1.0")),
    Case("te-underscore-with-cl", msg(H, C, "Transfer_Encoding: chunked", "Content-Length: 5", body="hello"),
         expect=EITHER),
    Case("te-leading-space-first-field", msg(" " + TE, H, C, body=CHUNKED_HELLO)),
    Case("te-tab-ows", chunked("Transfer-Encoding:\tchunked", body=CHUNKED_HELLO), expect=FORWARD),
    Case("te-no-space", chunked("Transfer-Encoding:chunked", body=CHUNKED_HELLO), expect=FORWARD),
    Case("te-trailing-space", chunked("Transfer-Encoding: chunked ", body=CHUNKED_HELLO), expect=FORWARD),
    Case("te-upper-case", chunked("Transfer-Encoding: CHUNKED", body=CHUNKED_HELLO), expect=FORWARD),
    Case("te-name-mixed-case", chunked("tRANSFER-eNCODING: chunked", body=CHUNKED_HELLO), expect=FORWARD),
    Case("te-leading-comma", chunked("Transfer-Encoding: ,chunked", body=CHUNKED_HELLO),
         expect=EITHER),
    Case("te-split-comma-list", chunked("Transfer-Encoding: ,", TE, body=CHUNKED_HELLO),
         expect=EITHER),
    # ---- Content-Length tricks
    Case("cl-differing-duplicates", msg(H, C, "Content-Length: 5", "Content-Length: 6", body="hello!")),
    Case("cl-same-duplicates", msg(H, C, "Content-Length: 5", "Content-Length: 5", body="hello"),
         expect=EITHER),
    Case("cl-list-same", msg(H, C, "Content-Length: 5, 5", body="hello"),
         expect=EITHER),
    Case("cl-list-differing", msg(H, C, "Content-Length: 5, 6", body="hello!")),
    Case("cl-plus-sign", msg(H, C, "Content-Length: +5", body="hello")),
    Case("cl-negative", msg(H, C, "Content-Length: -1", body="hello")),
    Case("cl-hex", msg(H, C, "Content-Length: 0x5", body="hello")),
    Case("cl-inner-space", msg(H, C, "Content-Length: 5 5", body="hello")),
    Case("cl-huge", msg(H, C, "Content-Length: 99999999999999999999", body="hello"), statuses=(400, 413)),
    Case("cl-nul", msg(H, C, "Content-Length: 5\x00", body="hello")),
    Case("cl-space-before-colon", msg(H, C, "Content-Length : 5", body="hello")),
    Case("cl-empty", msg(H, C, "Content-Length: ", body="hello")),
    Case("cl-vtab", msg(H, C, "Content-Length:\x0b5", body="hello")),
    Case("cl-ows-tab", msg(H, C, "Content-Length:\t5\t", body="hello"), expect=FORWARD),
    Case("cl-leading-zeros", msg(H, C, "Content-Length: 005", body="hello"), expect=FORWARD),
    Case("cl-underscore", msg(H, C, "Content_Length: 5", body=""), expect=EITHER),
    Case("cl-smuggle-keepalive", msg(H, "Content-Length: 5", body="hello" + f"GET /second HTTP/1.1\r\n{H}\r\n{C}\r\n\r\n"),
         expect=FORWARD, requests=2),
    # ---- chunk-size tricks
    Case("chunk-0x-prefix", chunked(TE, body="0x5\r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-trailing-space", chunked(TE, body="5 \r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-leading-space", chunked(TE, body=" 5\r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-negative", chunked(TE, body="-5\r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-size-overflow", chunked(TE, body="1" + "0" * 17 + "\r\nhello\r\n0\r\n\r\n"), statuses=(400, 413), body_error=True),
    Case("chunk-size-64bit-wrap", chunked(TE, body="10000000000000005\r\nhello\r\n0\r\n\r\n"), statuses=(400, 413), body_error=True),
    Case("chunk-ext-bare-lf", chunked(TE, body="5;x\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-ext-bare-cr", chunked(TE, body="5;x\ry\r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-data-too-long", chunked(TE, body="3\r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-data-bare-lf", chunked(TE, body="5\r\nhello\n0\r\n\r\n"), body_error=True),
    Case("chunk-size-bare-lf", chunked(TE, body="5\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-size-non-hex", chunked(TE, body="5g\r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-size-fullwidth-digit", chunked(TE, body="\uff15\r\nhello\r\n0\r\n\r\n".encode("utf-8").decode("latin-1")), body_error=True),
    Case("chunk-size-underscore", chunked(TE, body="0_5\r\nhello\r\n0\r\n\r\n"), body_error=True),
    Case("chunk-last-bare-lf", chunked(TE, body="5\r\nhello\r\n0\n\r\n"), body_error=True),
    Case("chunk-trailer-obs-fold", chunked(TE, body="5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n"), body_error=True),
    Case("chunk-ext-valid", chunked(TE, body="5;name=value;q=\"a b\"\r\nhello\r\n0\r\n\r\n"), expect=FORWARD),
    Case("chunk-leading-zeros", chunked(TE, body="0005\r\nhello\r\n000\r\n\r\n"), expect=FORWARD),
    Case("chunk-upper-hex", chunked(TE, body="A\r\n0123456789\r\n0\r\n\r\n"), expect=FORWARD),
    Case("chunk-trailers", chunked(TE, body="5\r\nhello\r\n0\r\nX-Trailer: a\r\n\r\n"), expect=FORWARD),
    Case("chunk-trailer-content-length", chunked(TE, body="5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"),
         expect=EITHER),
    Case("chunk-smuggle-after-last", msg(H, TE, body="0\r\n\r\n" + f"GET /second HTTP/1.1\r\n{H}\r\n{C}\r\n\r\n"),
         expect=FORWARD, requests=2),
    # ---- header name / value tricks
    Case("name-with-space", msg(H, C, "Foo Bar: x")),
    Case("line-without-colon", msg(H, C, "NoColonHere")),
    Case("empty-name", msg(H, C, ": x")),
    Case("value-nul", msg(H, C, "X: a\x00b")),
    Case("value-bare-cr", msg(H, C, "X: a\rb")),
    Case("value-del", msg(H, C, "X: a\x7fb")),
    Case("name-high-bit", msg(H, C, "X\xe9: a")),
    Case("header-bare-lf", msg(H, C, "X: a\nY: b")),
    Case("obs-fold-value", msg(H, C, "X: a", "\tb")),
    Case("name-tab-before-colon", msg(H, C, "X\t: a")),
    Case("value-obs-text", msg(H, C, "X: caf\xe9", "Content-Length: 0"), expect=FORWARD),
    Case("too-many-fields", msg(H, C, *(f"X-{i}: {i}" for i in range(150))), statuses=(431,)),
    Case("head-too-large", msg(H, C, *(f"X-{i}: {'a' * 1000}" for i in range(40))), statuses=(431,)),
    # ---- request line, HTTP/0.9 and HTTP/1.0 corner cases
    Case("http09", f"GET /\r\n{H}\r\n\r\n".encode()),
    Case("http09-bare", b"GET /\r\n\r\n"),
    Case("http2-version", msg(H, C, start="GET / HTTP/2.0"), statuses=(505,)),
    Case("http12-version", msg(H, C, start="GET / HTTP/1.2"), statuses=(505,)),
    Case("http3-version", msg(H, C, start="GET / HTTP/3.0"), statuses=(505,)),
    Case("version-lower-case", msg(H, C, start="GET / http/1.1")),
    Case("version-trailing-space", msg(H, C, start="GET / HTTP/1.1 ")),
    Case("double-space", msg(H, C, start="GET  / HTTP/1.1")),
    Case("tab-separator", msg(H, C, start="GET\t/ HTTP/1.1")),
    Case("space-in-target", msg(H, C, start="GET /a b HTTP/1.1")),
    Case("request-line-bare-lf", f"GET / HTTP/1.1\n{H}\r\n{C}\r\n\r\n".encode()),
    Case("connect-method", msg(H, C, start=f"CONNECT {HOST}:443 HTTP/1.1"), statuses=(400, 501)),
    Case("asterisk-with-get", msg(H, C, start="GET * HTTP/1.1")),
    Case("method-not-token", msg(H, C, start="G<T / HTTP/1.1")),
    Case("request-line-too-long", msg(H, C, start=f"GET /{'a' * 9000} HTTP/1.1"), statuses=(414,)),
    Case("leading-empty-lines", b"\r\n\r\n" + msg(H, C, start="GET / HTTP/1.1"), expect=FORWARD),
    Case("http10-no-host", msg(start="GET / HTTP/1.0"), expect=EITHER, statuses=(400, 404, 421)),
    Case("http10-with-body", msg(H, "Content-Length: 5", body="hello", start="POST / HTTP/1.0"), expect=FORWARD),
    Case("http10-keepalive-smuggle", msg(H, "Connection: keep-alive", "Content-Length: 5",
                                         body="hello" + f"GET /second HTTP/1.0\r\n{H}\r\n\r\n", start="POST / HTTP/1.0"),
         expect=FORWARD, requests=2),
    Case("http10-te-cl", msg(H, TE, "Content-Length: 5", body="hello", start="POST / HTTP/1.0")),
    # ---- Host and absolute-form
    Case("absolute-form-matching-host", msg(H, C, start=f"GET http://{HOST}/x HTTP/1.1"), expect=FORWARD),
    Case("absolute-form-other-host", msg(H, C, start="GET http://maps.localhost/x HTTP/1.1"), statuses=(400, 421)),
    Case("absolute-form-other-host-reverse", msg("Host: maps.localhost", C, start=f"GET http://{HOST}/x HTTP/1.1"),
         statuses=(400, 421)),
    Case("absolute-form-userinfo", msg(H, C, start=f"GET http://evil@{HOST}/ HTTP/1.1")),
    Case("absolute-form-no-host", msg(C, start=f"GET http://{HOST}/ HTTP/1.1"), expect=EITHER),
    Case("absolute-form-empty-authority", msg(H, C, start="GET http:///x HTTP/1.1")),
    Case("double-host-same", msg(H, H, C, start="GET / HTTP/1.1")),
    Case("double-host-differing", msg(H, "Host: maps.localhost", C, start="GET / HTTP/1.1")),
    Case("host-and-case-variant", msg(H, "hOsT: maps.localhost", C, start="GET / HTTP/1.1")),
    Case("missing-host-http11", msg(C, start="GET / HTTP/1.1")),
    Case("host-with-at", msg(f"Host: {HOST}@maps.localhost", C, start="GET / HTTP/1.1")),
    Case("host-with-space", msg(f"Host: {HOST} maps.localhost", C, start="GET / HTTP/1.1")),
    Case("host-double-port", msg(f"Host: {HOST}:80:80", C, start="GET / HTTP/1.1")),
    Case("host-with-path", msg(f"Host: {HOST}/x", C, start="GET / HTTP/1.1")),
    Case("host-empty", msg("Host: ", C, start="GET / HTTP/1.1"), statuses=(400, 404, 421)),
    Case("host-trailing-dot-and-port", msg(f"Host: {HOST.upper()}.:8080", C, start="GET / HTTP/1.1"), expect=FORWARD),
]


# --------------------------------------------------------------------------- the strict reader

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"[A-Z]+ [\x21-\x7e]+ HTTP/1\.[01]")


def framed_request(data: bytes) -> tuple[bytes, bytes] | str:
    """(request line, body) when `data` is exactly one unambiguous request, else why not."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return "no complete head"
    lines = head.split(b"\r\n")
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        return "bare CR or LF in the head"
    if not _REQUEST_LINE.fullmatch(lines[0]):
        return f"bad request line {lines[0][:80]!r}"
    te, cl = [], []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return f"bad field line {line[:80]!r}"
        lname, value = name.lower(), value.strip(b" \t")
        if lname == b"transfer-encoding":
            te.append(value)
        elif lname == b"content-length":
            cl.append(value)
        elif lname.replace(b"_", b"-") == b"transfer-encoding":
            # CGI/WSGI backends map '_' and '-' to the same variable (HTTP_TRANSFER_ENCODING).
            return f"look-alike framing header {name!r}"
    if te and cl:
        return "both Transfer-Encoding and Content-Length"
    if te:
        if len(te) != 1 or te[0].lower() != b"chunked":
            return f"non-canonical Transfer-Encoding {te!r}"
        return _dechunk(lines[0], rest)
    if cl:
        # RFC 9110 8.6 / 7230 3.3.2: a proxy that accepts a repeated or listed Content-Length must
        # forward a single valid one; backends disagree on what "5, 5" means.
        if len(cl) != 1 or not re.fullmatch(rb"[0-9]+", cl[0]):
            return f"ambiguous Content-Length {cl!r}"
        n = int(cl[0])
        if len(rest) != n:
            return f"Content-Length {n} but {len(rest)} body bytes"
        return lines[0], rest
    if rest:
        return f"{len(rest)} bytes after a message without a body"
    return lines[0], b""


def _dechunk(request_line: bytes, data: bytes) -> tuple[bytes, bytes] | str:
    body, pos = b"", 0
    for _ in range(10_000):
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            partial_ok = re.fullmatch(rb"[0-9A-Fa-f]*(;[^\r\n]*)?\r?", data[pos:])
            return "incomplete chunk size line" if partial_ok else f"bad chunk size line {data[pos:][:40]!r}"
        m = re.fullmatch(rb"([0-9A-Fa-f]+)(;[^\r\n]*)?", data[pos:eol])
        if not m:
            return f"bad chunk size line {data[pos:eol][:40]!r}"
        size, pos = int(m.group(1), 16), eol + 2
        if size == 0:
            for _ in range(200):        # trailer section up to the empty line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return "incomplete trailers"
                line, pos = data[pos:eol], eol + 2
                if not line:
                    return (request_line, body) if pos == len(data) else f"{len(data) - pos} bytes after the body"
                if b":" not in line or line[:1] in b" \t":
                    return f"bad trailer {line[:40]!r}"
            return "too many trailers"
        if len(data) < pos + size + 2 and b"\r\n"[:max(0, len(data) - pos - size)] == data[pos + size:]:
            return "incomplete chunk data"
        if data[pos + size:pos + size + 2] != b"\r\n":
            return "chunk data not followed by CRLF"
        body += data[pos:pos + size]
        pos += size + 2
    return "too many chunks"


def is_truncated(data: bytes) -> bool:
    """A well-formed head with a chunked body cut short: what a streaming router leaves at the
    backend when it finds the client's body malformed and aborts. Such a request can never end,
    so nothing in it can be taken for a second request."""
    verdict = framed_request(data)
    return isinstance(verdict, str) and verdict.startswith("incomplete")


def test_the_strict_reader_itself():
    assert framed_request(msg(H, "Content-Length: 5", body="hello"))[1] == b"hello"
    assert framed_request(msg(H, TE, body=CHUNKED_HELLO))[1] == b"hello"
    assert "but 5 body bytes" in framed_request(msg(H, "Content-Length: 1", body="hello"))
    assert "ambiguous" in framed_request(msg(H, "Content-Length: 5, 5", body="hello"))
    assert framed_request(msg(H, "Content_Length: 5")) == (b"POST / HTTP/1.1", b"")
    assert is_truncated(msg(H, TE, body="5\r\nhel"))
    assert not is_truncated(msg(H, TE, body="5\r\nhello\r\n0\r\n\r\nX"))
    assert not is_truncated(msg(H, TE, body="0x5\r\nhello"))
    assert is_truncated(msg(H, TE, body="5\r\nhello\r\n1"))
    assert not is_truncated(msg(H, TE, body="5\r\nhello\r\n-"))
    assert "both" in framed_request(msg(H, TE, "Content-Length: 5", body=CHUNKED_HELLO))
    assert "look-alike" in framed_request(msg(H, "Transfer_Encoding: chunked", body=""))
    assert "non-canonical" in framed_request(msg(H, "Transfer-Encoding: ,chunked", body=CHUNKED_HELLO))
    assert "after" in framed_request(msg(H, body="GET / HTTP/1.1\r\n\r\n"))
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- the pipeline

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    backend = RecordingBackend().start()
    apps = f"""
[[app]]
name = "raw"
hosts = ["{HOST}"]
retries = 0
servers = ["127.0.0.1:{backend.port}"]
"""
    try:
        yield from ((p, backend) for p in running_pipeline(
            tmp_path_factory.mktemp("smuggling"), extra_names=(HOST,), apps_first=apps,
            checker_extra="[app.raw]\ntype = \"tcp\"\n", check_type="tcp",
            router_timeouts={"http_request": 2}))
    finally:
        backend.stop()


def read_responses(sock: socket.socket, timeout: float = 8.0) -> tuple[list[int], bytes]:
    """Read until the router closes; the status codes of the responses, and all bytes."""
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return [int(s) for s in re.findall(rb"(?:^|\r\n\r\n|\n)HTTP/1\.[01] ([0-9]{3}) ", bytes(data))], bytes(data)


def send_case(p, listener: str, data: bytes) -> tuple[list[int], bytes]:
    if listener == "tls":
        sock = p.tls_socket(HOST)
    else:
        sock = socket.create_connection(("127.0.0.1", p.public_port), timeout=10)
    with sock:
        sock.sendall(data)
        return read_responses(sock)


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("listener", ["public", "tls"])
@pytest.mark.parametrize("case", list(_params()))
def test_smuggling_case(setup, listener, case):
    p, backend = setup
    backend.clear()
    statuses, raw = send_case(p, listener, case.data)
    assert statuses, f"no response at all: {raw[:300]!r}"
    if case.body_error:
        # The router may have streamed the head to the backend just before it found the body
        # malformed and answered: give that connection time to show up at the backend.
        time.sleep(0.2)
    # The router has answered; a backend exchange, if any, finishes within a moment.
    wait_until(backend.all_closed, timeout=5, what="backend connections closed")
    seen = backend.snapshot()
    forwarded = statuses[0] < 300
    if case.expect == FORWARD or (case.expect == EITHER and forwarded):
        assert forwarded, f"expected the request to be forwarded, got {statuses}: {raw[:300]!r}"
        assert len(seen) == case.requests, f"{len(seen)} backend connections: {seen!r}"
        for data in seen:
            verdict = framed_request(data)
            assert not isinstance(verdict, str), f"ambiguous request forwarded ({verdict}): {data!r}"
        assert statuses == [200] * case.requests, statuses
    else:
        assert statuses[0] in case.statuses, f"status {statuses[0]}, expected one of {case.statuses}: {raw[:300]!r}"
        if case.body_error:
            # The head was valid and has been streamed on before the body turned out malformed:
            # at most one request, cut short, and the backend connection closed.
            assert len(seen) <= 1 and all(is_truncated(d) for d in seen), f"the backend received {seen!r}"
        else:
            assert seen == [], f"refused, yet the backend received {seen!r}"

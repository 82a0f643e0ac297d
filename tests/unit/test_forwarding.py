"""mux_router.forwarding: the heads the router sends on."""
from __future__ import annotations

from frontgate.config import ErrorPage, HeaderRules
from mux_router.forwarding import (backend_request_head, client_cert_subject_line, client_response_head,
                                   simple_response)
from mux_router.http1_request import parse_request_head
from mux_router.http1_response import parse_response_head


def head(*lines):
    return parse_request_head(("\r\n".join(lines) + "\r\n\r\n").encode())[0]


def resp(*lines, method="GET"):
    return parse_response_head(("\r\n".join(lines) + "\r\n\r\n").encode(), method)[0]


def test_request_head_hop_by_hop_and_forwarded_headers():
    h = head("POST /a?b HTTP/1.1", "Host: maps", "Connection: keep-alive, X-Secret, Content-Length, Host",
             "Keep-Alive: 5", "X-Secret: s", "TE: trailers", "X-Forwarded-For: 6.6.6.6",
             "x-forwarded-proto: gopher", "Content-Length: 3", "Accept: */*")
    out = backend_request_head(h, client_ip="10.0.0.1", scheme="https", client_trusted=False)
    assert out == (b"POST /a?b HTTP/1.1\r\nHost: maps\r\nContent-Length: 3\r\nAccept: */*\r\n"
                   b"Connection: close\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
                   b"X-Forwarded-Host: maps\r\nX-Real-IP: 10.0.0.1\r\n\r\n")


def test_request_head_appends_to_a_trusted_forwarded_for():
    h = head("GET / HTTP/1.1", "Host: h", "X-Forwarded-For: 1.1.1.1", "X-Forwarded-For: 2.2.2.2, 3.3.3.3")
    out = backend_request_head(h, client_ip="127.0.0.1", scheme="http", client_trusted=True, keep_alive=True)
    assert b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1\r\n" in out
    assert b"Connection: keep-alive\r\n" in out


def test_websocket_request_keeps_upgrade():
    h = head("GET /socket HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: websocket",
             "Sec-WebSocket-Key: k")
    out = backend_request_head(h, client_ip="1.2.3.4", scheme="http", client_trusted=False)
    assert b"Upgrade: websocket\r\n" in out and b"Connection: Upgrade\r\n" in out
    assert b"Connection: close" not in out and b"Sec-WebSocket-Key: k\r\n" in out


def test_response_head_connection_management():
    r = resp("HTTP/1.1 200 OK", "Connection: close, X-Hop", "X-Hop: 1", "Keep-Alive: timeout=5",
             "Content-Length: 2", "Upgrade: h2c")
    assert client_response_head(r, keep_alive=True, client_version="HTTP/1.1") == \
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    assert client_response_head(r, keep_alive=False, client_version="HTTP/1.1").endswith(
        b"Content-Length: 2\r\nConnection: close\r\n\r\n")
    assert client_response_head(r, keep_alive=True, client_version="HTTP/1.0").endswith(
        b"Connection: keep-alive\r\n\r\n")
    switching = resp("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: upgrade",
                     "Sec-WebSocket-Accept: a")
    assert client_response_head(switching, keep_alive=False, client_version="HTTP/1.1") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n"
        b"Connection: Upgrade\r\n\r\n")
    assert client_response_head(resp("HTTP/1.1 100 Continue"), keep_alive=False,
                                client_version="HTTP/1.1") == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_simple_responses():
    r = simple_response(404, close=False, detail="no app")
    head, _, body = r.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"Connection" not in head
    assert f"Content-Length: {len(body)}".encode() in head and body == b"404 Not Found\nno app\n"
    r = simple_response(301, close=True, location="https://h/a?b=1")
    assert b"Location: https://h/a?b=1\r\n" in r and b"Connection: close\r\n" in r and b"no-store" not in r
    assert simple_response(400, close=True, with_body=False).endswith(b"\r\n\r\n")


def test_untrusted_client_forwarding_fields_are_replaced_and_rfc7239_added():
    h = head("GET / HTTP/1.1", "Host: maps.localhost:8080", "X-Forwarded-For: 6.6.6.6", "X-Real-IP: 6.6.6.6",
             "X-Forwarded-Host: evil", "Forwarded: for=6.6.6.6", "X-Forwarded-Proto: https")
    out = backend_request_head(h, client_ip="::1", scheme="http", client_trusted=False, forwarded=True)
    assert b"6.6.6.6" not in out and b"evil" not in out
    assert out.endswith(b"X-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: maps.localhost:8080\r\n"
                        b"X-Real-IP: ::1\r\nForwarded: for=\"[::1]\";proto=http;host=\"maps.localhost:8080\"\r\n\r\n")


def test_trusted_client_lists_are_appended_or_replaced():
    h = head("GET / HTTP/1.1", "Host: h", "X-Forwarded-For: 1.1.1.1", "Forwarded: for=1.1.1.1")
    out = backend_request_head(h, client_ip="10.0.0.2", scheme="https", client_trusted=True, forwarded=True)
    assert b"X-Forwarded-For: 1.1.1.1, 10.0.0.2\r\n" in out
    assert b'Forwarded: for=1.1.1.1, for=10.0.0.2;proto=https;host="h"\r\n' in out
    out = backend_request_head(h, client_ip="10.0.0.2", scheme="https", client_trusted=True,
                               forwarded_for="replace", forwarded=True)
    assert b"X-Forwarded-For: 10.0.0.2\r\n" in out and b"1.1.1.1" not in out


def test_header_rules_on_requests_and_responses():
    rules = HeaderRules(set=(("X-App", "maps"),), add=(("X-Tag", "b"),), delete=("x-debug",))
    h = head("GET / HTTP/1.1", "Host: h", "X-App: forged", "X-Debug: 1", "X-Tag: a")
    out = backend_request_head(h, client_ip="1.2.3.4", scheme="http", client_trusted=False, rules=rules)
    assert b"forged" not in out and b"X-Debug" not in out
    assert b"X-Tag: a\r\n" in out and b"X-App: maps\r\nX-Tag: b\r\n" in out
    r = resp("HTTP/1.1 200 OK", "Server: secret/1.0", "Content-Length: 0", "X-App: x")
    rules = HeaderRules(set=(("X-App", "y"),), delete=("server",))
    assert client_response_head(r, keep_alive=True, client_version="HTTP/1.1", rules=rules) == \
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-App: y\r\n\r\n"


def test_error_pages_and_retry_after():
    page = ErrorPage(b"<h1>down</h1>", "text/html; charset=utf-8")
    r = simple_response(503, close=False, page=page, retry_after=7)
    head_, _, body = r.partition(b"\r\n\r\n")
    assert body == b"<h1>down</h1>" and b"Content-Type: text/html; charset=utf-8\r\n" in head_
    assert b"Content-Length: 13\r\n" in head_ and head_.endswith(b"Retry-After: 7")
    assert b"Retry-After" not in simple_response(502, close=False, retry_after=7)


def test_framing_fields_are_forwarded_in_one_canonical_form():
    h = head("POST / HTTP/1.1", "Host: h", "Content-Length: 5, 5", "X: 1", "Content-Length: 5")
    out = backend_request_head(h, client_ip="1.2.3.4", scheme="http", client_trusted=False)
    assert out.startswith(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX: 1\r\nConnection: close\r\n")
    h = head("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: ,", "Transfer-Encoding: ,CHUNKED ")
    out = backend_request_head(h, client_ip="1.2.3.4", scheme="http", client_trusted=False)
    assert out.count(b"Transfer-Encoding") == 1 and b"Host: h\r\nTransfer-Encoding: chunked\r\nConnection" in out


def test_client_cert_subject_is_set_by_the_router_only():
    h = head("GET / HTTP/1.1", "Host: h", "X-Client-Cert-Subject: forged", "x-client-cert-subject: forged2",
             "Connection: X-Client-Cert-Subject")
    line = client_cert_subject_line("alice")
    for trusted in (False, True):       # not even a trusted source may send its own
        out = backend_request_head(h, client_ip="1.2.3.4", scheme="https", client_trusted=trusted,
                                   client_cert_line=line)
        assert b"forged" not in out
        assert out.count(b"X-Client-Cert-Subject: ") == 1 and b"\r\nX-Client-Cert-Subject: alice\r\n" in out
        # Without a verified certificate the client's fields are dropped and nothing is added.
        out = backend_request_head(h, client_ip="1.2.3.4", scheme="https", client_trusted=trusted)
        assert b"client-cert-subject" not in out.lower()


def test_client_cert_subject_line_escapes_what_could_break_the_head():
    assert client_cert_subject_line("Zoë Ünicode") == "X-Client-Cert-Subject: Zoë Ünicode".encode()
    assert client_cert_subject_line("evil\r\nX-Admin: 1") == b"X-Client-Cert-Subject: evil%0D%0AX-Admin: 1"
    assert client_cert_subject_line("100%\x00\x7f") == b"X-Client-Cert-Subject: 100%25%00%7F"


def test_a_head_with_nothing_to_rewrite_goes_on_as_it_came():
    # The raw shortcut: the client's lines byte for byte (odd spacing included), ours appended.
    h = head("GET /x HTTP/1.1", "Host:maps  ", "Accept:\t*/*", "X-Trace: a:b")
    out = backend_request_head(h, client_ip="10.0.0.1", scheme="http", client_trusted=False, keep_alive=True)
    assert out == (b"GET /x HTTP/1.1\r\nHost:maps  \r\nAccept:\t*/*\r\nX-Trace: a:b\r\n"
                   b"Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                   b"X-Forwarded-Host: maps\r\nX-Real-IP: 10.0.0.1\r\n\r\n")
    # Any field the router drops or replaces, in any case, takes the field-by-field way.
    for line in ("x-real-ip: 6.6.6.6", "KEEP-ALIVE: 5", "Forwarded: for=x", "x-client-cert-subject: CN=me"):
        out = backend_request_head(head("GET / HTTP/1.1", "Host: h", line), client_ip="10.0.0.1", scheme="http",
                                   client_trusted=False)
        assert line.encode() not in out, line
    # A field the client names in Connection goes too, whatever it is called.
    out = backend_request_head(head("GET / HTTP/1.1", "Host: h", "Connection: x-a", "X-A: 1"),
                               client_ip="10.0.0.1", scheme="http", client_trusted=False)
    assert b"X-A" not in out


def test_response_hop_by_hop_lines_go_the_rest_stays_as_sent():
    r = resp("HTTP/1.1 200 OK", "Server: nginx", "content-length:  4", "connection: keep-alive",
             "Keep-Alive: timeout=5", "ETag: \"a\"")
    assert client_response_head(r, keep_alive=True, client_version="HTTP/1.1") == \
        b'HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length:  4\r\nETag: "a"\r\n\r\n'
    # Connection naming an end-to-end-looking field: that field is dropped as well.
    r = resp("HTTP/1.1 200 OK", "Connection: X-Hop", "X-Hop: 1", "Content-Length: 0")
    assert client_response_head(r, keep_alive=True, client_version="HTTP/1.1") == \
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_request_line_carries_the_normalised_target_with_the_query_as_sent():
    cases = [
        # (request line sent by the client, request line the backend reads)
        ("GET /x/../%61dmin//p?q=/../%2f HTTP/1.1", b"GET /admin/p?q=/../%2f HTTP/1.1\r\n"),
        ("GET http://h?x HTTP/1.1", b"GET http://h/?x HTTP/1.1\r\n"),
        ("OPTIONS * HTTP/1.1", b"OPTIONS * HTTP/1.1\r\n"),
        ("GET /plain?x HTTP/1.1", b"GET /plain?x HTTP/1.1\r\n"),
    ]
    for line, expected in cases:
        for extra in ((), ("X-Forwarded-For: 6.6.6.6",)):     # head forwarded whole, and rewritten
            out = backend_request_head(head(line, "Host: h", *extra), client_ip="10.0.0.1", scheme="http",
                                       client_trusted=False)
            assert out.startswith(expected + b"Host: h\r\n"), (line, extra, out)
            assert out.count(b" HTTP/1.1\r\n") == 1

"""The fields the router owns, in every spelling a backend folds to them: the folding rule
(mux_router/field_names.py), the request head (forwarding.backend_request_head) and the trailers
of a chunked request body (request_trailers.TrailerFilter)."""
from __future__ import annotations

import re

import pytest

from frontgate.config import HeaderRules
from mux_router.field_names import any_spelling, fold
from mux_router.forwarding import ROUTER_OWNED, backend_request_head, owned_fields
from mux_router.chunked import ChunkedDecoder
from mux_router.http1 import HttpError
from mux_router.http1_request import parse_request_head
from mux_router.request_trailers import TrailerFilter


@pytest.mark.parametrize("name, folded", [
    (b"X-Real-IP", b"x-real-ip"),
    (b"X_Real_IP", b"x-real-ip"),
    (b"x-real_ip", b"x-real-ip"),
    (b"X_CLIENT_CERT_SUBJECT", b"x-client-cert-subject"),
    (b"Forwarded", b"forwarded"),
    (b"X__Real-IP", b"x--real-ip"),         # one `_` is one `-`: not the same field
    (b"Host", b"host"),
])
def test_fold(name, folded):
    assert fold(name) == folded


@pytest.mark.parametrize("names, text, matches", [
    ([b"x-real-ip"], b"X_Real_IP", True),
    ([b"x-real-ip"], b"x-real_ip", True),
    ([b"x-real-ip"], b"X-REAL-IP", True),
    ([b"x-real-ip"], b"X.Real.IP", False),       # the dash is not any character
    ([b"x-real-ip"], b"XRealIP", False),
    ([b"content-length", b"host"], b"Content_Length", True),
    ([b"content-length", b"host"], b"HOST", True),
    ([b"content-length", b"host"], b"Hostx", False),
])
def test_any_spelling(names, text, matches):
    assert bool(re.fullmatch(any_spelling(names), text)) is matches


def head(*lines):
    return parse_request_head(("\r\n".join(lines) + "\r\n\r\n").encode())[0]


RULES = HeaderRules(set=(("X-App-Role", "reader"),), delete=("x-debug",))

# (client field line, trusted client, app rules): the value must not reach the backend.
FORGED = [
    ("X_Client_Cert_Subject: admin", False, None),
    ("X_Client_Cert_Subject: admin", True, None),
    ("x-client_cert-subject: admin", False, None),
    ("X_Forwarded_For: 1.2.3.4", False, None),
    ("X_Forwarded_For: 1.2.3.4", True, None),    # a second channel beside the believed dash form
    ("X_Real_IP: 1.2.3.4", False, None),
    ("x-real_ip: 1.2.3.4", True, None),
    ("X_Forwarded_Proto: gopher", True, None),
    ("X_Forwarded_Host: evil.example", False, None),
    ("X_App_Role: admin", False, RULES),          # a name the app's rules set
    ("X_App_Role: admin", True, RULES),
    ("X_Debug: admin", False, RULES),              # a name the app's rules delete
    ("X-Forwarded-Port: 8443", False, None),        # the X-Forwarded-* space is the router's
    ("X-Forwarded-Ssl: forged-on", False, None),
    ("X_Forwarded_Ssl: forged-on", True, None),            # from trusted sources: the dash form only
    ("x-forwarded_prefix: /admin", True, None),
]


@pytest.mark.parametrize("line, trusted, rules", FORGED)
def test_owned_fields_in_any_spelling_never_reach_the_backend(line, trusted, rules):
    extra = {} if rules is None else {"rules": rules}
    out = backend_request_head(head("GET / HTTP/1.1", "Host: h", line, "Accept: */*"),
                               client_ip="10.0.0.1", scheme="https", client_trusted=trusted, **extra)
    value = line.split(": ", 1)[1].encode()
    assert value not in out, out
    assert b"Accept: */*\r\n" in out                # the rest of the head goes on
    assert b"X-Real-IP: 10.0.0.1\r\n" in out


def test_a_trusted_client_dash_form_is_believed_its_underscore_form_dropped():
    h = head("GET / HTTP/1.1", "Host: h", "X-Forwarded-For: 1.1.1.1", "X_Forwarded_For: 6.6.6.6")
    out = backend_request_head(h, client_ip="127.0.0.1", scheme="http", client_trusted=True)
    assert b"X-Forwarded-For: 1.1.1.1, 127.0.0.1\r\n" in out and b"6.6.6.6" not in out


def test_a_trusted_client_other_x_forwarded_fields_go_on_in_their_dash_form():
    h = head("GET / HTTP/1.1", "Host: h", "X-Forwarded-Port: 8443", "X-Forwarded-Prefix: /app")
    out = backend_request_head(h, client_ip="127.0.0.1", scheme="http", client_trusted=True)
    assert b"X-Forwarded-Port: 8443\r\n" in out and b"X-Forwarded-Prefix: /app\r\n" in out
    out = backend_request_head(h, client_ip="127.0.0.1", scheme="http", client_trusted=False)
    assert b"8443" not in out and b"/app" not in out


def test_other_underscore_fields_go_on():
    h = head("GET / HTTP/1.1", "Host: h", "X_Custom_Thing: 1", "Accept_Language: de")
    out = backend_request_head(h, client_ip="10.0.0.1", scheme="http", client_trusted=False)
    assert b"X_Custom_Thing: 1\r\n" in out and b"Accept_Language: de\r\n" in out


def test_owned_fields_are_the_routers_and_the_rules_names_folded():
    assert owned_fields() == ROUTER_OWNED
    assert {b"x-forwarded-for", b"x-real-ip", b"forwarded", b"x-client-cert-subject"} <= ROUTER_OWNED
    assert owned_fields(RULES) == ROUTER_OWNED | {b"x-app-role", b"x-debug"}


@pytest.mark.parametrize("line", ["Content_Length: 5", "transfer_encoding: chunked", "Transfer-encoding_: x"])
def test_the_parser_refuses_what_folds_to_a_framing_field(line):
    # The same rule (field_names.any_spelling) finds them; "Transfer-encoding_" is another name.
    raw = f"POST / HTTP/1.1\r\nHost: h\r\n{line}\r\n\r\n".encode()
    if line.startswith("Transfer-encoding_"):
        assert parse_request_head(raw)[0].content_length is None
    else:
        with pytest.raises(HttpError) as e:
            parse_request_head(raw)
        assert e.value.status == 400


# --------------------------------------------------------------------------- trailers

OWNED = owned_fields(RULES)
CHUNKS = b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n"

# (trailer section as sent, as forwarded)
TRAILERS = [
    (b"\r\n", b"\r\n"),                                                # none
    (b"X-Checksum: 1\r\n\r\n", b"X-Checksum: 1\r\n\r\n"),              # nothing owned: as it came
    (b"X-Checksum:1 \r\n\r\n", b"X-Checksum:1 \r\n\r\n"),              # byte for byte
    (b"X_Client_Cert_Subject: admin\r\n\r\n", b"\r\n"),
    (b"X-Client-Cert-Subject: admin\r\n\r\n", b"\r\n"),
    (b"X_Forwarded_For: 1.2.3.4\r\nX-Checksum: 1\r\nX_Real_IP: 1.2.3.4\r\n\r\n", b"X-Checksum: 1\r\n\r\n"),
    (b"x-real_ip: 1.2.3.4\r\nforwarded: for=1.2.3.4\r\n\r\n", b"\r\n"),
    (b"X-Forwarded-Proto: gopher\r\n\r\n", b"\r\n"),                   # believed in no trailer
    (b"X-Forwarded-Port: 1\r\nX_Forwarded_Ssl: on\r\nX-Forwarded: 2\r\n\r\n", b"X-Forwarded: 2\r\n\r\n"),
    (b"X_App_Role: admin\r\nX-Debug: 1\r\nX-Other: 2\r\n\r\n", b"X-Other: 2\r\n\r\n"),
]


def relay(data: bytes, cuts: list[int]) -> tuple[bytes, int]:
    """Feed `data` in the pieces `cuts` makes; what went on and how many bytes were used."""
    f = TrailerFilter(ChunkedDecoder(), OWNED)
    out, used_total = b"", 0
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        piece = data[start:end]
        sent, used = f.feed(piece)
        out += sent
        used_total += used
    assert f.done
    return out, used_total


@pytest.mark.parametrize("section, forwarded", TRAILERS)
def test_trailers_the_router_owns_are_dropped_whatever_the_split(section, forwarded):
    body = CHUNKS + section
    data = body + b"GET /next HTTP/1.1\r\n"             # a pipelined request follows
    for cut in range(1, len(data)):
        assert relay(data, [cut]) == (CHUNKS + forwarded, len(body)), cut
    assert relay(data, list(range(1, len(data)))) == (CHUNKS + forwarded, len(body))   # byte by byte


def test_no_trailer_byte_goes_on_before_the_section_is_complete():
    f = TrailerFilter(ChunkedDecoder(), OWNED)
    assert f.feed(CHUNKS + b"X_Real_IP: 1.2.3.4\r\n") == (CHUNKS, len(CHUNKS) + 20)
    assert f.feed(b"\r\n") == (b"\r\n", 2) and f.done

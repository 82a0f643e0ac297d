"""HTTP/2 header lists to and from the HTTP/1.1 heads of the exchange machine, sans-IO.

An HTTP/2 stream is served by the same exchange machine as an HTTP/1.1 request: its HEADERS
become the HTTP/1.1 head the machine parses (so the 421 check, names, routing, ACLs and header
rules are the one code), and the machine's HTTP/1.1 response head becomes HEADERS again. What is
HTTP/2's own lives here: the pseudo-header fields, the fields RFC 9113 8.2.2 forbids, the cookie
crumbs of 8.2.3, and the rule that field names are lower case. A request that breaks one is
malformed (8.1.1): a stream error PROTOCOL_ERROR, never a head the machine would see.
"""
from __future__ import annotations

import re

from hpack import NeverIndexedHeaderTuple

from mux_router.forwarding import HOP_BY_HOP
from mux_router.http1 import field_lines
from mux_router.http1_response import ResponseHead

Fields = list[tuple[bytes, bytes]]

# RFC 9113 8.2.2: fields that describe one HTTP/1.1 connection; TE is allowed with "trailers" only.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# A lower-case token (RFC 9110 5.6.2 without upper case letters, RFC 9113 8.2.1).
_NAME_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# A value the HTTP/1.1 head can carry as it is: no NUL, CR, LF (RFC 9113 8.2.1), no other control
# characters (the http1 parser refuses them too) and no whitespace at either end.
_VALUE_RE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\t \x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_METHOD_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Dropped from a response on its way to an HTTP/2 client (the machine wrote them for HTTP/1.1).
_RESPONSE_DROPPED = HOP_BY_HOP | CONNECTION_SPECIFIC
_NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization"})


class Malformed(Exception):
    """A request or trailer field section RFC 9113 calls malformed: the stream is reset."""


def _check_field(name: bytes, value: bytes) -> None:
    if not _NAME_RE.fullmatch(name):
        raise Malformed(f"invalid field name {name[:40]!r}")
    if not _VALUE_RE.fullmatch(value):
        raise Malformed(f"invalid value of {name.decode()}")
    if name in CONNECTION_SPECIFIC:
        raise Malformed(f"connection-specific field {name.decode()}")
    if name == b"te" and value.lower() != b"trailers":
        raise Malformed("TE other than trailers")


def request_head(headers, *, has_body: bool) -> tuple[bytes, bool]:
    """The HTTP/1.1 head for an HTTP/2 request's header list, and whether its body goes chunked.
    `has_body`: the HEADERS did not end the stream. `:authority` becomes Host (the one place the
    machine reads the host from); cookie crumbs are joined with "; "."""
    pseudo: dict[bytes, bytes] = {}
    lines: list[bytes] = []
    cookies: list[bytes] = []
    host = content_length = None
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise Malformed("pseudo-header field after a regular one")
            if name not in REQUEST_PSEUDO or name in pseudo:
                raise Malformed(f"unknown or repeated pseudo-header field {name[:40]!r}")
            pseudo[name] = value
            continue
        regular = True
        _check_field(name, value)
        if name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            host = value
        elif name == b"te":
            continue                        # "trailers": about this hop only
        else:
            if name == b"content-length":
                if content_length is not None and value != content_length:
                    raise Malformed("several Content-Length values")
                content_length = value
            lines.append(name + b": " + value)
    method, path = pseudo.get(b":method"), pseudo.get(b":path")
    if method is None or not _METHOD_RE.fullmatch(method):
        raise Malformed("missing or invalid :method")
    if method == b"CONNECT":
        raise Malformed("CONNECT is not supported")     # no SETTINGS_ENABLE_CONNECT_PROTOCOL either
    if pseudo.get(b":scheme") not in (b"https", b"http"):
        raise Malformed("missing or invalid :scheme")
    if not path or not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")) or not _VALUE_RE.fullmatch(path) \
            or b" " in path or b"\t" in path:
        raise Malformed("missing or invalid :path")
    authority = pseudo.get(b":authority")
    if authority is not None:
        if not _VALUE_RE.fullmatch(authority) or b" " in authority or b"\t" in authority:
            raise Malformed("invalid :authority")
        if host is not None and host.lower() != authority.lower():
            raise Malformed(":authority and Host differ")     # RFC 9113 8.3.1: they must not
        host = authority
    out = [method + b" " + path + b" HTTP/1.1"]
    if host is not None:
        out.append(b"host: " + host)
    out += lines
    if cookies:
        out.append(b"cookie: " + b"; ".join(cookies))
    chunked = has_body and content_length is None
    if chunked:
        out.append(b"transfer-encoding: chunked")
    return b"\r\n".join(out) + b"\r\n\r\n", chunked


def chunk(data: bytes) -> bytes:
    """One DATA frame's bytes as an HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def last_chunk(trailers=()) -> bytes:
    """The end of a chunked request body, with the client's trailer fields (validated as fields
    are; framing and routing fields never travel in a trailer, TrailerFilter drops them)."""
    lines = []
    for name, value in trailers:
        if name[:1] == b":":
            raise Malformed("pseudo-header field in trailers")
        _check_field(name, value)
        lines.append(name + b": " + value + b"\r\n")
    return b"0\r\n" + b"".join(lines) + b"\r\n"


def response_fields(resp: ResponseHead) -> Fields:
    """The HEADERS of an HTTP/1.1 response head the machine wrote: `:status`, then its fields
    lower-cased, without the connection-specific ones (and those its Connection names)."""
    drop = _RESPONSE_DROPPED | resp.connection_tokens
    out = [(b":status", b"%d" % resp.status)]
    for name, value in field_lines(resp.raw):
        name = name.lower()
        if name not in drop:
            out.append(_secure(name, value))
    return out


def trailer_fields(fields) -> Fields:
    """A chunked response's trailer section as HTTP/2 trailers."""
    return [_secure(n.lower(), v) for n, v in fields if n.lower() not in _RESPONSE_DROPPED]


def _secure(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """Credentials stay out of the HPACK table (never indexed, RFC 7541 7.1.3): the rule the h2
    library applies when it normalizes outbound fields, which the connection turns off."""
    if name in _NEVER_INDEXED or (name == b"cookie" and len(value) < 20):
        return NeverIndexedHeaderTuple(name, value)
    return name, value

"""HTTP/1.1 request heads, sans-IO: RequestHeadParser (on http1's scanner) takes a client's head
apart strictly and says how its body is framed; RequestHead is what the router knows of it."""
from __future__ import annotations

import functools
import re
from typing import NamedTuple

from frontgate import names
from frontgate.paths import UnsafeTarget, request_targets
from mux_router.field_names import any_spelling
from mux_router.http1 import (FIELD_BLOCK, MAX_EMPTY_LINES, NO_TOKENS, SUPPORTED_VERSIONS, TOKEN, TOKEN_RE, VALUE_CHARS,
                              VERSION_TEXT, Headers, HeadScanner, HttpError, Memo, comma_tokens, connection_set,
                              content_length_of, field_lines, fields_named, keeps_alive)

_REQUEST_LINE = rb"(" + TOKEN + rb") ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])"
_REQUEST_LINE_RE = re.compile(_REQUEST_LINE)
_WHOLE_REQUEST_RE = re.compile(_REQUEST_LINE + FIELD_BLOCK)
_HTTP_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
_ABSOLUTE_RE = re.compile(rb"(?i:https?)://([^/?#]*)([^#]*)")


def _request_host(value: bytes, what: str = "invalid Host header") -> tuple[str, str | None]:
    """A Host header (or absolute-form authority) as sent -> (its text, the host as
    RequestHead.host has it: frontgate.names' form, None when empty); 400 if invalid."""
    text = value.decode("latin-1")
    try:
        return text, names.split_authority(text)[0]
    except names.BadName:
        raise HttpError(400, what) from None


_REQUEST_HOSTS = Memo(_request_host)
_METHOD_TEXT = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}


class RequestHead(NamedTuple):
    method: str
    target: str                 # as sent: origin-form, absolute-form, or "*"
    version: str                # "HTTP/1.1" | "HTTP/1.0"
    raw: bytes                  # the head as received, request line to the empty line
    host: str | None            # frontgate.names' form, no port; None without Host (or an empty one)
    host_as_sent: str | None    # the Host header (or absolute-form authority) verbatim
    path: str                   # the normalised path (frontgate.paths), for routing, ACLs, the uri hash
    origin_target: str          # normalised path and query as sent: what a redirect keeps
    forward_target: str         # the target the backend receives: `target` with the normalised path
    content_length: int | None
    chunked: bool
    keep_alive: bool            # what the client asked for (version default, Connection header)
    is_websocket_upgrade: bool
    connection_tokens: frozenset[bytes] = NO_TOKENS     # lower-cased

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    @property
    def headers(self) -> Headers:
        """(name, value) in original order, OWS trimmed: read from `raw` when asked (most requests
        are forwarded without it)."""
        return field_lines(self.raw)

    def get_all(self, name: bytes) -> list[bytes]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]


# The parser makes one head per request: tuple.__new__ with every field, in order, skips the
# NamedTuple's Python-level __new__.
_new_request_head = functools.partial(tuple.__new__, RequestHead)


# The fields the parser reads, in every spelling (fields_named refuses the underscore ones).
_REQUEST_FIELDS_RE = re.compile(
    rb"\n(" + any_spelling((b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade"))
    + rb"):[\t ]*(" + VALUE_CHARS + rb"*)\r")


class RequestHeadParser(HeadScanner):
    _whole_re = _WHOLE_REQUEST_RE
    error_status = 400
    line_too_long_status = 414
    skip_empty_lines = MAX_EMPTY_LINES

    def _first_line(self, line: bytes) -> None:
        m = _REQUEST_LINE_RE.fullmatch(line)
        if not m:
            # Tell an unsupported version apart from a malformed line.
            parts = line.split(b" ")
            if len(parts) == 3 and TOKEN_RE.fullmatch(parts[0]) and _HTTP_VERSION_RE.fullmatch(parts[2]):
                raise HttpError(400, "invalid request target")
            raise HttpError(400, "malformed request line")
        self._check_start(*m.groups())

    def _check_start(self, method: bytes, target: bytes, version: bytes) -> None:
        if method == b"PRI":        # the HTTP/2 preface: cleartext h2c is not served (only h2 by ALPN)
            raise HttpError(400, "HTTP/2 without TLS (h2c) is not served")
        if version not in SUPPORTED_VERSIONS:
            raise HttpError(505, f"{version.decode()} is not supported")
        if method == b"CONNECT":
            raise HttpError(501, "CONNECT is not supported")
        if not (target.startswith(b"/") or _ABSOLUTE_RE.fullmatch(target)
                or (target == b"*" and method == b"OPTIONS")):
            raise HttpError(400, "invalid request target")
        self._parts = method, target, version

    def _finish(self, raw: bytes) -> RequestHead:
        method, target, version = self._parts
        by_name = fields_named(raw, _REQUEST_FIELDS_RE)
        hosts = by_name.get(b"host", ())
        if len(hosts) > 1:
            raise HttpError(400, "several Host headers")
        if not hosts and version == b"HTTP/1.1":
            raise HttpError(400, "missing Host header")
        host_as_sent = hosts[0] if hosts else None
        host_text, host = _REQUEST_HOSTS[host_as_sent] if host_as_sent is not None else (None, None)

        path_and_query = target
        absolute = None if target[:1] == b"/" else _ABSOLUTE_RE.fullmatch(target)
        if absolute:
            authority, path_and_query = absolute.groups()
            # RFC 9112 3.2.2 says the target's authority wins over Host; refusing a mismatch keeps
            # the router and the backend from picking different hosts.
            if host_as_sent is not None and authority.lower() != host_as_sent.lower():
                raise HttpError(400, "Host header differs from the request target")
            host_text, host = _request_host(authority, "invalid authority in request target")
            if host is None:
                raise HttpError(400, "invalid authority in request target")
        target_text = target.decode()
        try:
            path, origin_target, forward_target = request_targets(target_text, len(path_and_query))
        except UnsafeTarget as e:
            raise HttpError(400, e.reason) from None

        transfer_encoding = by_name.get(b"transfer-encoding")
        content_lengths = by_name.get(b"content-length")
        chunked = False
        if transfer_encoding:
            if version == b"HTTP/1.0":
                raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if content_lengths:
                raise HttpError(400, "both Content-Length and Transfer-Encoding")
            codings = comma_tokens(transfer_encoding)
            if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                raise HttpError(400, "Transfer-Encoding must end with a single chunked")
            if len(codings) > 1:
                # Well formed, but the router forwards bodies as they are and backends rarely
                # decode other transfer codings.
                raise HttpError(501, "transfer codings other than chunked are not supported")
            chunked = True
        content_length = content_length_of(content_lengths, 400) if content_lengths else None

        connection = connection_set(by_name.get(b"connection"))
        upgrade = by_name.get(b"upgrade")
        websocket = (upgrade is not None and method == b"GET" and version == b"HTTP/1.1"
                     and b"upgrade" in connection
                     and any(u.split(b"/")[0] == b"websocket" for u in comma_tokens(upgrade)))
        return _new_request_head((
            _METHOD_TEXT.get(method) or method.decode(), target_text, VERSION_TEXT[version], raw, host, host_text,
            path, origin_target, forward_target, content_length, chunked,
            keeps_alive(version, connection), websocket, connection))


def parse_request_head(buf: bytes | bytearray | memoryview, **limits) -> tuple[RequestHead, int] | None:
    """None: need more bytes. (head, consumed) once the head is complete. HttpError when invalid."""
    parser = RequestHeadParser(**limits)
    head = parser.feed(buf)
    return None if head is None else (head, parser.consumed)


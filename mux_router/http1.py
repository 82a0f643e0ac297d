"""HTTP/1.1 message framing, sans-IO: request heads, response heads, chunked bodies.

Nothing here touches a socket: parsers take bytes and return values or raise HttpError. They are
strict per RFC 9112 because the router forwards what it parsed to a backend that will parse it
again; wherever two parsers could disagree about where a message ends (duplicate Content-Length,
Content-Length with Transfer-Encoding, obs-fold, bare CR/LF, whitespace before a colon ...) a
request could be smuggled past the router, so such messages are rejected, never "repaired".

Every parser is incremental (feed bytes as they arrive) and gives the same result whatever way
the bytes are split; `parse_request_head` / `parse_response_head` are the one-shot forms.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from frontgate import names
from mux_router.field_names import any_spelling
from frontgate.paths import UnsafeTarget, request_targets

MAX_REQUEST_LINE = 8 * 1024       # longer: 414
MAX_HEAD = 32 * 1024              # request line + fields; longer: 431
MAX_FIELDS = 100                  # more header fields: 431
MAX_EMPTY_LINES = 8               # CRLFs tolerated before a request line (RFC 9112 2.2)
MAX_CHUNK_LINE = 4 * 1024         # chunk-size line with its extensions
MAX_CHUNK_SIZE_DIGITS = 16        # 2**64: a bigger chunk is an attack, not a file

Headers = tuple[tuple[bytes, bytes], ...]


class HttpError(Exception):
    """A message the router must refuse: `status` is the response to send (400, 414, 431, 501, 505
    for requests; 502 for a bad response from a backend)."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpError) and (self.status, self.reason) == (other.status, other.reason)

    def __hash__(self) -> int:
        return hash((self.status, self.reason))


# --------------------------------------------------------------------------- grammar (RFC 9110 5.6)

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
# field-value: VCHAR, SP, HTAB, obs-text. Anything else (NUL, CR, LF, other controls, DEL) is refused.
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_OWS = b" \t"
# A field line that parse_field_line would accept, from its start (^ in MULTILINE: after an LF) to
# its CRLF, as (name, value without leading OWS): a token, a colon right after it, then only
# characters allowed in a value (HTAB, SP, VCHAR, obs-text). Trailing OWS (rare) is trimmed apart:
# in the pattern it costs a backtrack per value.
_VALUE_CHARS = rb"[\t \x21-\x7e\x80-\xff]"
_FIELD_RE = re.compile(rb"^(" + _TOKEN + rb"):[\t ]*(" + _VALUE_CHARS + rb"*)\r\n", re.MULTILINE)
_REQUEST_LINE = rb"(" + _TOKEN + rb") ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])"
_REQUEST_LINE_RE = re.compile(_REQUEST_LINE)
_STATUS_LINE = rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: (" + _VALUE_CHARS + rb"*))?"
_STATUS_LINE_RE = re.compile(_STATUS_LINE)
# A whole head that the scanner would accept line by line, in one match: the start line (its three
# parts are groups 1-3), the field lines as _FIELD_RE takes them (group 4), the empty line. Each
# line can match one way only (a value cannot hold CR), so a failed match costs one pass, not a
# backtracking search.
_FIELD_BLOCK = rb"\r\n((?:" + _TOKEN + rb":" + _VALUE_CHARS + rb"*\r\n)*)\r\n"
_WHOLE_REQUEST_RE = re.compile(_REQUEST_LINE + _FIELD_BLOCK)
_WHOLE_RESPONSE_RE = re.compile(_STATUS_LINE + _FIELD_BLOCK)
_HTTP_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
_SUPPORTED_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_ABSOLUTE_RE = re.compile(rb"(?i:https?)://([^/?#]*)([^#]*)")
_DIGITS_RE = re.compile(rb"[0-9]{1,18}")
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})((?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*)"
    % (MAX_CHUNK_SIZE_DIGITS, _TOKEN, _TOKEN, _QUOTED_STRING))


def comma_tokens(values: Iterable[bytes]) -> list[bytes]:
    """The lower-cased elements of comma-separated header values, empty elements dropped
    (RFC 9110 5.6.1)."""
    out = []
    for value in values:
        for part in value.split(b","):
            part = part.strip(_OWS)
            if part:
                out.append(part.lower())
    return out


class _Memo(dict):
    """A bounded memo of a pure function of a value that takes few values in real traffic (a Host,
    a Connection, a whole head): a hit is one dict lookup; cleared when full, so a peer that sends
    endless variants costs only misses. A value the function refuses (raises) is not kept.
    `memo[key]` computes a missing value with `function`; `keep` stores one computed elsewhere."""

    def __init__(self, function=None, size: int = 512):
        super().__init__()
        self.function, self.size = function, size

    def __missing__(self, key):
        value = self.function(key)
        self.keep(key, value)
        return value

    def keep(self, key, value) -> None:
        if len(self) >= self.size:
            self.clear()
        self[key] = value


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(comma_tokens((value,)))


def _request_host(value: bytes, what: str = "invalid Host header") -> tuple[str, str | None]:
    """A Host header (or absolute-form authority) as sent -> (its text, the host as
    RequestHead.host has it: frontgate.names' form, None when empty); 400 if invalid."""
    text = value.decode("latin-1")
    try:
        return text, names.split_authority(text)[0]
    except names.BadName:
        raise HttpError(400, what) from None


_CONNECTION_TOKENS = _Memo(_connection_tokens)
_REQUEST_HOSTS = _Memo(_request_host)
# The texts of the parts of a start line that take few values: a lookup instead of a decode.
_VERSION_TEXT = {v: v.decode() for v in (b"HTTP/1.1", b"HTTP/1.0")}
_METHOD_TEXT = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}


def _connection(values: list[bytes] | None) -> frozenset[bytes]:
    if not values:
        return NO_TOKENS
    if len(values) == 1:
        return _CONNECTION_TOKENS[values[0]]
    return frozenset(comma_tokens(values))


# --------------------------------------------------------------------------- messages

# The heads are NamedTuples: immutable and compared by value like frozen dataclasses, and made at a
# fraction of their cost (two per proxied request).
NO_TOKENS: frozenset[bytes] = frozenset()


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


NO_BODY, LENGTH, CHUNKED, CLOSE = "none", "length", "chunked", "close"


class ResponseHead(NamedTuple):
    version: str
    status: int
    reason: str
    raw: bytes
    body: str                   # NO_BODY | LENGTH | CHUNKED | CLOSE (read until the server closes)
    content_length: int | None  # for LENGTH
    keep_alive: bool            # the server will keep the connection open after this response
    connection_tokens: frozenset[bytes] = NO_TOKENS

    @property
    def informational(self) -> bool:
        return 100 <= self.status < 200

    @property
    def headers(self) -> Headers:
        return field_lines(self.raw)


# The parsers make two heads per proxied request: tuple.__new__ with every field, in order, skips
# the NamedTuple's Python-level __new__.
_new_request_head = functools.partial(tuple.__new__, RequestHead)
_new_response_head = functools.partial(tuple.__new__, ResponseHead)


def field_lines(raw: bytes) -> Headers:
    """The field lines of a head the parsers accepted, as (name, value) with OWS trimmed."""
    fields = _FIELD_RE.findall(raw, raw.find(b"\r\n") + 2)
    if raw.find(b" \r\n") >= 0 or raw.find(b"\t\r\n") >= 0:       # trailing OWS (rare)
        fields = [(name, value.rstrip(_OWS)) for name, value in fields]
    return tuple(fields)


# --------------------------------------------------------------------------- head scanning

class _HeadParser:
    """Shared incremental scanner: optional leading empty lines, a start line, field lines, the
    empty line. Each complete line is validated once, as soon as it arrives, so a malformed
    request is refused without waiting for (or buffering) the rest of it."""

    error_status = 400              # what a malformed head earns
    line_too_long_status = 400
    head_too_large_status = 431
    skip_empty_lines = 0

    # The scanner's state starts as these class defaults: a head that arrives whole (nearly all)
    # never needs the rest, so a parser costs its three limits until the scanner runs.
    _buf: bytes | bytearray = b""   # the scanner's bytearray, made by its first feed
    _pos = 0                        # start of the next line to examine
    _scan_from = 0                  # where to resume looking for LF in an incomplete line
    _start: int | None = None       # start of the start line (after skipped empty lines)
    _start_line: bytes | None = None
    _parts: tuple[bytes, bytes, bytes]     # the start line's three parts, once checked
    _field_count = 0                # field lines checked so far (the head keeps them in raw)
    _end: int | None = None
    _result = None

    max_line, max_head, max_fields = MAX_REQUEST_LINE, MAX_HEAD, MAX_FIELDS

    def __init__(self, max_line: int = MAX_REQUEST_LINE, max_head: int = MAX_HEAD,
                 max_fields: int = MAX_FIELDS):
        self.max_line, self.max_head, self.max_fields = max_line, max_head, max_fields

    def feed(self, data: bytes | bytearray | memoryview = b""):
        """Add bytes; the parsed head once complete (then `leftover` holds what follows), else None."""
        if self._result is not None:
            raise RuntimeError("head already complete")
        if not self._buf:
            if type(data) is bytes and self._whole(data):
                return self._result
            if not isinstance(self._buf, bytearray):
                self._buf = bytearray()
        self._buf += data
        buf = self._buf
        while True:
            if self._start is None:
                skipped = self._pos // 2
                if buf.startswith(b"\r\n", self._pos) and skipped < self.skip_empty_lines:
                    self._pos += 2
                    continue
                if len(buf) - self._pos < 2 and buf[self._pos:] in (b"", b"\r") and skipped < self.skip_empty_lines:
                    return None
                self._start = self._scan_from = self._pos
            lf = buf.find(b"\n", max(self._pos, self._scan_from))
            if lf < 0:
                self._scan_from = len(buf)
                self._check_incomplete()
                return None
            self._scan_from = lf + 1
            # Sizes are checked before syntax, and counted up to the LF, so that a line is judged
            # the same whether it arrived whole or byte by byte.
            if self._start_line is None:
                if lf - self._start > self.max_line + 1:
                    raise self._line_too_long()
            elif lf + 1 - self._start > self.max_head:
                raise HttpError(self.head_too_large_status, "request header fields too large")
            if lf == self._pos or buf[lf - 1] != 0x0D:
                raise HttpError(self.error_status, "bare LF (lines must end with CRLF)")
            line = bytes(buf[self._pos:lf - 1])
            if self._start_line is None:
                self._start_line = line
                self._first_line(line)
            elif not line:
                self._end = lf + 1
                self._result = self._finish(bytes(buf[self._start:self._end]))
                return self._result
            else:
                parse_field_line(line, self.error_status)
                self._field_count += 1
                if self._field_count > self.max_fields:
                    raise HttpError(self.head_too_large_status, "too many header fields")
            self._pos = lf + 1

    def _whole(self, data: bytes) -> bool:
        """The common case, a whole plain head in one piece: its lines validated by one regex match
        instead of the byte scanner. Only heads the scanner accepts, well inside every limit, are
        taken here (True); for anything else (False) the scanner runs and gives its verdict."""
        m = self._whole_re.match(data)
        if m is None:
            return False            # malformed, incomplete, or empty lines first: the scanner's job
        end = m.end()
        first = m.start(4) - 2      # the start line's length
        if (end >= self.max_head or first >= self.max_line
                or data.count(b"\n", first + 2, end - 2) > self.max_fields):
            return False
        self._check_start(*m.group(1, 2, 3))
        self._buf, self._start, self._end = data, 0, end
        self._result = self._finish(data[:end] if end < len(data) else data)
        return True

    def _check_incomplete(self) -> None:
        pending = len(self._buf) - self._start
        if self._start_line is None:
            # +1: the last byte may be the CR of a CRLF that ends a line of exactly max_line.
            if pending > self.max_line + 1:
                raise self._line_too_long()
        elif pending >= self.max_head:
            # The head still lacks at least its final LF, so it would exceed max_head.
            raise HttpError(self.head_too_large_status, "request header fields too large")

    def _line_too_long(self) -> HttpError:
        return HttpError(self.line_too_long_status, "start line too long")

    @property
    def consumed(self) -> int:
        """Bytes of the input that made up the head (including skipped empty lines)."""
        if self._end is None:
            raise RuntimeError("head not complete")
        return self._end

    @property
    def leftover(self) -> bytes:
        """What was fed after the head: the body's first bytes, or a pipelined request."""
        return bytes(self._buf[self.consumed:])

    def _first_line(self, line: bytes) -> None:
        """Parse and check a start line the scanner found; sets _parts."""
        raise NotImplementedError

    def _check_start(self, a: bytes, b: bytes, c: bytes | None) -> None:
        """Check the parts of a syntactically valid start line (a method or version ...), and keep
        them in _parts."""
        raise NotImplementedError

    def _finish(self, raw: bytes):
        raise NotImplementedError


def parse_field_line(line: bytes, error_status: int = 400) -> tuple[bytes, bytes]:
    """`name: value` -> (name, value with OWS trimmed). RFC 9112 5: no obs-fold, no whitespace
    between name and colon, the name a token, the value free of control characters."""
    if line[:1] in (b" ", b"\t"):
        raise HttpError(error_status, "obsolete line folding")
    name, colon, value = line.partition(b":")
    if not colon:
        raise HttpError(error_status, "header line without a colon")
    if not _TOKEN_RE.fullmatch(name):
        if name[-1:] in (b" ", b"\t"):
            raise HttpError(error_status, "whitespace before a colon")
        raise HttpError(error_status, "invalid header name")
    value = value.strip(_OWS)
    if _BAD_VALUE_CHAR.search(value):
        raise HttpError(error_status, f"control character in {name.decode()} value")
    return name, value


def _content_length(values: list[bytes], status: int) -> int | None:
    """Several Content-Length fields (or a list) are allowed only when all are the same number."""
    if not values:
        return None
    if len(values) == 1 and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])           # the usual single number (bytes.isdigit: ASCII digits only)
    numbers = set()
    for value in values:
        for part in value.split(b","):
            part = part.strip(_OWS)
            if not _DIGITS_RE.fullmatch(part):
                raise HttpError(status, "invalid Content-Length")
            numbers.add(int(part))
    if len(numbers) != 1:
        raise HttpError(status, "differing Content-Length values")
    return numbers.pop()


# The fields whose values the parsers read (the others are only checked and passed on), found in
# a head already validated: a field line starts after an LF and its value ends at the CR. The
# request's set also takes the names that CGI/WSGI map to a framing field (`Transfer_Encoding`
# would frame the message for such a backend although the router ignored it): _fields_named
# refuses them.
_REQUEST_FIELDS_RE = re.compile(
    rb"\n(" + any_spelling((b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade"))
    + rb"):[\t ]*(" + _VALUE_CHARS + rb"*)\r")
_RESPONSE_FIELDS_RE = re.compile(
    rb"\n((?i:content-length|transfer-encoding|connection)):[\t ]*(" + _VALUE_CHARS + rb"*)\r")


def _fields_named(raw: bytes, fields_re: re.Pattern) -> dict[bytes, list[bytes]]:
    """The values (OWS trimmed) of the fields `fields_re` finds in a valid head, by lower-case
    name; a name with an underscore is a 400."""
    out: dict[bytes, list[bytes]] = {}
    for name, value in fields_re.findall(raw):
        lname = name.lower()
        if b"_" in lname:
            raise HttpError(400, f"{lname.decode()} looks like a framing header")
        value = value.rstrip(_OWS)
        if lname in out:
            out[lname].append(value)
        else:
            out[lname] = [value]
    return out


def _keep_alive(version: bytes, connection: frozenset[bytes]) -> bool:
    if b"close" in connection:
        return False
    return version == b"HTTP/1.1" or b"keep-alive" in connection


# --------------------------------------------------------------------------- requests

class RequestHeadParser(_HeadParser):
    _whole_re = _WHOLE_REQUEST_RE
    error_status = 400
    line_too_long_status = 414
    skip_empty_lines = MAX_EMPTY_LINES

    def _first_line(self, line: bytes) -> None:
        m = _REQUEST_LINE_RE.fullmatch(line)
        if not m:
            # Tell an unsupported version apart from a malformed line.
            parts = line.split(b" ")
            if len(parts) == 3 and _TOKEN_RE.fullmatch(parts[0]) and _HTTP_VERSION_RE.fullmatch(parts[2]):
                raise HttpError(400, "invalid request target")
            raise HttpError(400, "malformed request line")
        self._check_start(*m.groups())

    def _check_start(self, method: bytes, target: bytes, version: bytes) -> None:
        if method == b"PRI":        # the HTTP/2 preface: cleartext h2c is not served (only h2 by ALPN)
            raise HttpError(400, "HTTP/2 without TLS (h2c) is not served")
        if version not in _SUPPORTED_VERSIONS:
            raise HttpError(505, f"{version.decode()} is not supported")
        if method == b"CONNECT":
            raise HttpError(501, "CONNECT is not supported")
        if not (target.startswith(b"/") or _ABSOLUTE_RE.fullmatch(target)
                or (target == b"*" and method == b"OPTIONS")):
            raise HttpError(400, "invalid request target")
        self._parts = method, target, version

    def _finish(self, raw: bytes) -> RequestHead:
        method, target, version = self._parts
        by_name = _fields_named(raw, _REQUEST_FIELDS_RE)
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
        content_length = _content_length(content_lengths, 400) if content_lengths else None

        connection = _connection(by_name.get(b"connection"))
        upgrade = by_name.get(b"upgrade")
        websocket = (upgrade is not None and method == b"GET" and version == b"HTTP/1.1"
                     and b"upgrade" in connection
                     and any(u.split(b"/")[0] == b"websocket" for u in comma_tokens(upgrade)))
        return _new_request_head((
            _METHOD_TEXT.get(method) or method.decode(), target_text, _VERSION_TEXT[version], raw, host, host_text,
            path, origin_target, forward_target, content_length, chunked,
            _keep_alive(version, connection), websocket, connection))


def parse_request_head(buf: bytes | bytearray | memoryview, **limits) -> tuple[RequestHead, int] | None:
    """None: need more bytes. (head, consumed) once the head is complete. HttpError when invalid."""
    parser = RequestHeadParser(**limits)
    head = parser.feed(buf)
    return None if head is None else (head, parser.consumed)


# --------------------------------------------------------------------------- responses

class ResponseHeadParser(_HeadParser):
    """A backend's response head; anything malformed is a 502 for the client."""
    _whole_re = _WHOLE_RESPONSE_RE
    error_status = 502
    line_too_long_status = 502
    head_too_large_status = 502

    def __init__(self, request_method: str, **limits):
        if limits:
            super().__init__(**limits)
        self.request_method = request_method

    def _first_line(self, line: bytes) -> None:
        m = _STATUS_LINE_RE.fullmatch(line)
        if not m:
            raise HttpError(502, "malformed status line")
        self._check_start(*m.groups())

    def _check_start(self, version: bytes, status: bytes, reason: bytes | None) -> None:
        if version not in _SUPPORTED_VERSIONS:
            raise HttpError(502, f"backend answered with {version.decode()}")
        if status[0] == 0x30:           # "0xx"
            raise HttpError(502, "invalid status code")
        self._parts = version, status, reason or b""

    def _finish(self, raw: bytes) -> ResponseHead:
        version, status, reason = self._parts
        status = int(status)
        by_name = _fields_named(raw, _RESPONSE_FIELDS_RE)
        connection = _connection(by_name.get(b"connection"))
        keep_alive = _keep_alive(version, connection)
        content_length = None
        # RFC 9112 6.3, in order.
        if self.request_method == "HEAD" or 100 <= status < 200 or status == 204 or status == 304:
            body = NO_BODY
        elif b"transfer-encoding" in by_name:
            if b"content-length" in by_name:
                raise HttpError(502, "both Content-Length and Transfer-Encoding in response")
            transfer_encoding = comma_tokens(by_name[b"transfer-encoding"])
            if transfer_encoding and transfer_encoding[-1] == b"chunked" and transfer_encoding.count(b"chunked") == 1:
                body = CHUNKED
            else:
                body, keep_alive = CLOSE, False
        else:
            content_lengths = by_name.get(b"content-length")
            content_length = _content_length(content_lengths, 502) if content_lengths else None
            if content_length is not None:
                body = LENGTH
            else:
                body, keep_alive = CLOSE, False
        return _new_response_head((_VERSION_TEXT[version], status, reason.decode("latin-1"), raw, body,
                                   content_length, keep_alive, connection))


def parse_response_head(buf: bytes | bytearray | memoryview, request_method: str = "GET",
                        **limits) -> tuple[ResponseHead, int] | None:
    parser = ResponseHeadParser(request_method, **limits)
    head = parser.feed(buf)
    return None if head is None else (head, parser.consumed)


# --------------------------------------------------------------------------- chunked bodies

@dataclass(frozen=True)
class ChunkData:
    data: bytes


@dataclass(frozen=True)
class Trailers:
    headers: Headers


_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """Follows a chunked body (RFC 9112 7.1) byte by byte so that a proxy can forward the bytes as
    they are and still know exactly where the message ends.

    `feed(data)` returns (events, consumed): ChunkData / Trailers events, and how many bytes of
    `data` belong to this body. consumed < len(data) only once `done`: the rest is the next
    message. Invalid framing raises HttpError(error_status).
    """

    def __init__(self, error_status: int = 400, max_line: int = MAX_CHUNK_LINE,
                 max_trailers: int = MAX_HEAD, max_trailer_fields: int = MAX_FIELDS):
        self.error_status = error_status
        self.max_line, self.max_trailers, self.max_trailer_fields = max_line, max_trailers, max_trailer_fields
        self._state = _SIZE
        self._line = bytearray()        # the current incomplete line (size, CRLF, or trailer)
        self._remaining = 0             # data bytes left in the current chunk
        self._trailers: list[tuple[bytes, bytes]] = []
        self._trailer_bytes = 0
        self.body_bytes = 0             # decoded data so far
        # Where the trailer section starts in the data of the last feed (0: before it, it had
        # started already); None while the chunks go on. For a relay that rewrites the trailers.
        self.trailers_from: int | None = None

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[list[ChunkData | Trailers], int]:
        data = bytes(data)
        events: list[ChunkData | Trailers] = []
        self.trailers_from = 0 if self._state == _TRAILER else None
        i, n = 0, len(data)
        while i < n and self._state != _DONE:
            if self._state == _DATA:
                take = min(self._remaining, n - i)
                events.append(ChunkData(data[i:i + take]))
                self.body_bytes += take
                self._remaining -= take
                i += take
                if self._remaining == 0:
                    self._state = _DATA_CRLF
                continue
            # The other states read lines: collect up to the LF.
            lf = data.find(b"\n", i)
            end = n if lf < 0 else lf + 1
            self._line += data[i:end]
            i = end
            if self._state == _DATA_CRLF:
                if not b"\r\n".startswith(self._line):
                    raise HttpError(self.error_status, "chunk data not followed by CRLF")
                if lf >= 0:
                    self._line.clear()
                    self._state = _SIZE
                continue
            what = "chunk size line" if self._state == _SIZE else "trailer section"
            limit = self.max_line if self._state == _SIZE else self.max_trailers - self._trailer_bytes
            # As for heads: the size counted up to the LF, so any split gives the same verdict.
            if len(self._line) - (lf >= 0) > limit + 1:
                raise HttpError(self.error_status, f"{what} too long")
            if lf < 0:
                continue
            line = bytes(self._line)
            self._line.clear()
            if line[-2:-1] != b"\r":
                raise HttpError(self.error_status, f"bare LF in {what}")
            line = line[:-2]
            if self._state == _SIZE:
                m = _CHUNK_LINE_RE.fullmatch(line)
                if not m:
                    raise HttpError(self.error_status, "invalid chunk size line")
                size = int(m.group(1), 16)
                if size:
                    self._remaining, self._state = size, _DATA
                else:
                    self._state, self.trailers_from = _TRAILER, i
            else:
                self._trailer_bytes += len(line) + 2
                if not line:
                    if self._trailers:
                        events.append(Trailers(tuple(self._trailers)))
                    self._state = _DONE
                else:
                    self._trailers.append(parse_field_line(line, self.error_status))
                    if len(self._trailers) > self.max_trailer_fields:
                        raise HttpError(self.error_status, "too many trailer fields")
        return events, i

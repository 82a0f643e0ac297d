"""HTTP/1.1 message framing, sans-IO: what the head parsers share (the limits, HttpError, the
field grammar of RFC 9110 5.6 and 9112 5, the field rules both kinds of head follow) and the
incremental head scanner they are built on. The parsers: http1_request.py (request heads),
http1_response.py (response heads and their body rules), chunked.py (chunked bodies).

Nothing here touches a socket: parsers take bytes and return values or raise HttpError. They are
strict per RFC 9112 because the router forwards what it parsed to a backend that will parse it
again; wherever two parsers could disagree about where a message ends (duplicate Content-Length,
Content-Length with Transfer-Encoding, obs-fold, bare CR/LF, whitespace before a colon ...) a
request could be smuggled past the router, so such messages are rejected, never "repaired".

Every parser is incremental (feed bytes as they arrive) and gives the same result whatever way
the bytes are split.
"""
from __future__ import annotations

import re
from typing import Iterable

MAX_REQUEST_LINE = 8 * 1024       # longer: 414
MAX_HEAD = 32 * 1024              # request line + fields; longer: 431
MAX_FIELDS = 100                  # more header fields: 431
MAX_EMPTY_LINES = 8               # CRLFs tolerated before a request line (RFC 9112 2.2)

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

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN_RE = re.compile(TOKEN)
# field-value: VCHAR, SP, HTAB, obs-text. Anything else (NUL, CR, LF, other controls, DEL) is refused.
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
OWS = b" \t"
# A field line that parse_field_line would accept, from its start (^ in MULTILINE: after an LF) to
# its CRLF, as (name, value without leading OWS): a token, a colon right after it, then only
# characters allowed in a value (HTAB, SP, VCHAR, obs-text). Trailing OWS (rare) is trimmed apart:
# in the pattern it costs a backtrack per value.
VALUE_CHARS = rb"[\t \x21-\x7e\x80-\xff]"
_FIELD_RE = re.compile(rb"^(" + TOKEN + rb"):[\t ]*(" + VALUE_CHARS + rb"*)\r\n", re.MULTILINE)
# The field lines of a whole head as the scanner would accept them line by line (group 4 of a
# whole-head pattern, after the start line's three groups), then the empty line. Each line can match
# one way only (a value cannot hold CR), so a failed match costs one pass, not a backtracking search.
FIELD_BLOCK = rb"\r\n((?:" + TOKEN + rb":" + VALUE_CHARS + rb"*\r\n)*)\r\n"
SUPPORTED_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_DIGITS_RE = re.compile(rb"[0-9]{1,18}")


def comma_tokens(values: Iterable[bytes]) -> list[bytes]:
    """The lower-cased elements of comma-separated header values, empty elements dropped
    (RFC 9110 5.6.1)."""
    out = []
    for value in values:
        for part in value.split(b","):
            part = part.strip(OWS)
            if part:
                out.append(part.lower())
    return out


class Memo(dict):
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


_CONNECTION_TOKENS = Memo(_connection_tokens)
# Hop-by-hop fields (RFC 9110 7.6.1) describe one connection, never the next one. Transfer-Encoding
# is hop-by-hop too, but the router forwards chunked bodies as they are, so it stays.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade", b"http2-settings"})
# The text of a supported version: a lookup instead of a decode.
VERSION_TEXT = {v: v.decode() for v in SUPPORTED_VERSIONS}
# Lower-cased Connection tokens; also the heads' default.
NO_TOKENS: frozenset[bytes] = frozenset()


def connection_set(values: list[bytes] | None) -> frozenset[bytes]:
    if not values:
        return NO_TOKENS
    if len(values) == 1:
        return _CONNECTION_TOKENS[values[0]]
    return frozenset(comma_tokens(values))


def field_lines(raw: bytes) -> Headers:
    """The field lines of a head the parsers accepted, as (name, value) with OWS trimmed."""
    fields = _FIELD_RE.findall(raw, raw.find(b"\r\n") + 2)
    if raw.find(b" \r\n") >= 0 or raw.find(b"\t\r\n") >= 0:       # trailing OWS (rare)
        fields = [(name, value.rstrip(OWS)) for name, value in fields]
    return tuple(fields)


# --------------------------------------------------------------------------- head scanning

class HeadScanner:
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
    if not TOKEN_RE.fullmatch(name):
        if name[-1:] in (b" ", b"\t"):
            raise HttpError(error_status, "whitespace before a colon")
        raise HttpError(error_status, "invalid header name")
    value = value.strip(OWS)
    if _BAD_VALUE_CHAR.search(value):
        raise HttpError(error_status, f"control character in {name.decode()} value")
    return name, value


def content_length_of(values: list[bytes], status: int) -> int | None:
    """Several Content-Length fields (or a list) are allowed only when all are the same number."""
    if not values:
        return None
    if len(values) == 1 and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])           # the usual single number (bytes.isdigit: ASCII digits only)
    numbers = set()
    for value in values:
        for part in value.split(b","):
            part = part.strip(OWS)
            if not _DIGITS_RE.fullmatch(part):
                raise HttpError(status, "invalid Content-Length")
            numbers.add(int(part))
    if len(numbers) != 1:
        raise HttpError(status, "differing Content-Length values")
    return numbers.pop()


def fields_named(raw: bytes, fields_re: re.Pattern) -> dict[bytes, list[bytes]]:
    """The values (OWS trimmed) of the fields `fields_re` finds in a valid head, by lower-case
    name; a name with an underscore is a 400. The parsers' patterns find the fields whose values
    they read (the others are only checked and passed on) after an LF, the value ending at the CR;
    the request's also takes the names that CGI/WSGI map to a framing field (`Transfer_Encoding`
    would frame the message for such a backend although the router ignored it)."""
    out: dict[bytes, list[bytes]] = {}
    for name, value in fields_re.findall(raw):
        lname = name.lower()
        if b"_" in lname:
            raise HttpError(400, f"{lname.decode()} looks like a framing header")
        value = value.rstrip(OWS)
        if lname in out:
            out[lname].append(value)
        else:
            out[lname] = [value]
    return out


def keeps_alive(version: bytes, connection: frozenset[bytes]) -> bool:
    if b"close" in connection:
        return False
    return version == b"HTTP/1.1" or b"keep-alive" in connection


"""HTTP/1.1 response heads, sans-IO: ResponseHeadParser (on http1's scanner) takes a backend's head
apart strictly and says how its body is framed (RFC 9112 6.3); a malformed one is a 502 for the
client."""
from __future__ import annotations

import functools
import re
from typing import NamedTuple

from mux_router.http1 import (FIELD_BLOCK, HOP_BY_HOP, NO_TOKENS, OWS, SUPPORTED_VERSIONS, VALUE_CHARS, VERSION_TEXT,
                              Headers, HeadScanner, HttpError, comma_tokens, connection_set, content_length_of,
                              field_lines, keeps_alive)

_STATUS_LINE = rb"(HTTP/[0-9]\.[0-9]) ([0-9]{3})(?: (" + VALUE_CHARS + rb"*))?"
_STATUS_LINE_RE = re.compile(_STATUS_LINE)
_WHOLE_RESPONSE_RE = re.compile(_STATUS_LINE + FIELD_BLOCK)
# One pass over a valid head (re.split, in C) finds both the fields the parser reads (framing,
# Connection) and the hop-by-hop lines the client must not get from the backend: the split's
# pieces are [text, line, name, value, text, line, name, value, ..., text], the lines whole.
_READ_OR_HOP_RE = re.compile(rb"(\r\n((?i:content-length|transfer-encoding|" + b"|".join(sorted(HOP_BY_HOP))
                             + rb")):[\t ]*(" + VALUE_CHARS + rb"*))")
_FRAMING = (b"content-length", b"transfer-encoding")


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
    # `raw` without its hop-by-hop lines and its final empty line: what the client gets of it when
    # Connection names nothing else (forwarding.client_response_head).
    end_to_end: bytes = b""

    @property
    def informational(self) -> bool:
        return 100 <= self.status < 200

    @property
    def headers(self) -> Headers:
        return field_lines(self.raw)


_new_response_head = functools.partial(tuple.__new__, ResponseHead)


class ResponseHeadParser(HeadScanner):
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
        if version not in SUPPORTED_VERSIONS:
            raise HttpError(502, f"backend answered with {version.decode()}")
        if status[0] == 0x30:           # "0xx"
            raise HttpError(502, "invalid status code")
        self._parts = version, status, reason or b""

    def _finish(self, raw: bytes) -> ResponseHead:
        version, status, reason = self._parts
        status = int(status)
        by_name, end_to_end = _read_fields(raw)
        connection = connection_set(by_name.get(b"connection"))
        keep_alive = keeps_alive(version, connection)
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
            content_length = content_length_of(content_lengths, 502) if content_lengths else None
            if content_length is not None:
                body = LENGTH
            else:
                body, keep_alive = CLOSE, False
        return _new_response_head((VERSION_TEXT[version], status, reason.decode("latin-1"), raw, body,
                                   content_length, keep_alive, connection, end_to_end))


def _read_fields(raw: bytes) -> tuple[dict[bytes, list[bytes]], bytes]:
    """The values (OWS trimmed) of the fields the parser reads, by lower-case name, and
    ResponseHead.end_to_end, from one split of a valid head."""
    pieces = _READ_OR_HOP_RE.split(raw)
    if len(pieces) == 1:
        return {}, raw[:-4]
    by_name: dict[bytes, list[bytes]] = {}
    kept = [pieces[0]]
    for i in range(1, len(pieces), 4):
        lname = pieces[i + 1].lower()
        if lname in _FRAMING:
            kept.append(pieces[i])
        if lname in _FRAMING or lname == b"connection":
            value = pieces[i + 2].rstrip(OWS)
            if lname in by_name:
                by_name[lname].append(value)
            else:
                by_name[lname] = [value]
        kept.append(pieces[i + 3])
    kept[-1] = kept[-1][:-4]
    return by_name, b"".join(kept)


def parse_response_head(buf: bytes | bytearray | memoryview, request_method: str = "GET",
                        **limits) -> tuple[ResponseHead, int] | None:
    parser = ResponseHeadParser(request_method, **limits)
    head = parser.feed(buf)
    return None if head is None else (head, parser.consumed)


"""Chunked bodies (RFC 9112 7.1), sans-IO: ChunkedDecoder follows one byte by byte, so that the
router forwards the bytes as they are and still knows exactly where the message ends."""
from __future__ import annotations

import re
from dataclasses import dataclass

from mux_router.http1 import MAX_FIELDS, MAX_HEAD, TOKEN, Headers, HttpError, parse_field_line

MAX_CHUNK_LINE = 4 * 1024         # chunk-size line with its extensions
MAX_CHUNK_SIZE_DIGITS = 16        # 2**64: a bigger chunk is an attack, not a file
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})((?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*)"
    % (MAX_CHUNK_SIZE_DIGITS, TOKEN, TOKEN, _QUOTED_STRING))


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

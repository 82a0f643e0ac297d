"""A chunked request body on its way to the backend: the chunks as they came, the trailer section
without the fields the router owns. Sans-IO: the engine feeds what the client sent and writes what
comes back.

A trailer is a header field that arrives after the body (RFC 9110 6.5), and servers that merge
trailers into the request's fields (or hand them to the application beside them) would take a
client's `X-Forwarded-For` or `X_Client_Cert_Subject` trailer for the router's. Trailer fields
that fold (mux_router/field_names.py) to a field the router owns (forwarding.is_owned: its own,
the names the app's request rules set or delete, any X-Forwarded-*) are dropped, from every
source: a trailer is never believed, even from trusted_sources. The request itself goes on: the
same policy as for the head.

To drop a field the relay holds the trailer section back until its empty line (at most the
decoder's trailer limit, 32 KiB), so that no byte of it reaches the backend before it is judged.
"""
from __future__ import annotations

from mux_router.field_names import fold
from mux_router.forwarding import is_owned
from mux_router.chunked import ChunkedDecoder, Trailers
from mux_router.http1 import Headers

CRLF = b"\r\n"


def without_owned(fields: Headers, owned: frozenset[bytes]) -> Headers:
    """The trailer fields that go on: those whose folded name is not in `owned`."""
    return tuple((name, value) for name, value in fields if not is_owned(fold(name), owned))


class TrailerFilter:
    """Wraps a ChunkedDecoder: `feed(data)` -> (bytes for the backend, bytes of `data` used).
    Chunk bytes go on as they came; the trailer section is held until it is complete, then sent
    as it came when nothing was dropped, else rewritten with the remaining fields."""

    def __init__(self, decoder: ChunkedDecoder, owned: frozenset[bytes]):
        self.decoder, self.owned = decoder, owned
        self._held = b""                # the trailer section so far

    @property
    def done(self) -> bool:
        return self.decoder.done

    def feed(self, data: bytes) -> tuple[bytes, int]:
        events, used = self.decoder.feed(data)
        start = self.decoder.trailers_from
        if start is None:
            return data[:used], used
        out, self._held = data[:start], self._held + data[start:used]
        if self.decoder.done:
            fields = next((e.headers for e in events if isinstance(e, Trailers)), ())
            kept = without_owned(fields, self.owned)
            if len(kept) == len(fields):
                out += self._held
            else:
                out += b"".join(name + b": " + value + CRLF for name, value in kept) + CRLF
            self._held = b""
        return out, used

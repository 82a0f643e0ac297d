"""The exchange machine's bytes for one HTTP/2 stream, read back as what HTTP/2 sends, sans-IO.

The machine writes HTTP/1.1 to its client: interim heads, the final head, a body framed by
Content-Length, chunked coding, or the close. `ResponseReader.feed` turns those bytes into events
for the stream: ("info", fields), ("head", fields, end), ("data", bytes, end), ("trailers",
fields). The machine has checked every byte already (it parsed the backend's response or wrote
its own answer), so what is parsed here again is only where each part ends.
"""
from __future__ import annotations

from mux_router.h2_fields import response_fields, trailer_fields
from mux_router.chunked import ChunkData, ChunkedDecoder, Trailers
from mux_router.http1_response import CHUNKED, CLOSE, LENGTH, ResponseHeadParser

HEAD, BODY, DONE = "head", "body", "done"


class ResponseReader:

    def __init__(self, method: str):
        self.method = method
        self.state = HEAD
        self.parser = ResponseHeadParser(method)
        self.framing = None
        self.remaining = 0
        self.decoder: ChunkedDecoder | None = None

    @property
    def ended(self) -> bool:
        return self.state is DONE

    def feed(self, data: bytes) -> list[tuple]:
        events: list[tuple] = []
        while data and self.state is HEAD:
            resp = self.parser.feed(data)
            if resp is None:
                return events
            data = self.parser.leftover
            self.parser = ResponseHeadParser(self.method)
            fields = response_fields(resp)
            if resp.informational:
                events.append(("info", fields))
                continue
            self.framing = framing = resp.body
            if framing is LENGTH and resp.content_length:
                self.remaining = resp.content_length
                events.append(("head", fields, False))
                self.state = BODY
            elif framing is CHUNKED:
                self.decoder = ChunkedDecoder(error_status=502)
                events.append(("head", fields, False))
                self.state = BODY
            elif framing is CLOSE:
                events.append(("head", fields, False))
                self.state = BODY
            else:
                events.append(("head", fields, True))
                self.state = DONE
        if data and self.state is BODY:
            self._body(data, events)
        return events

    def _body(self, data: bytes, events: list) -> None:
        framing = self.framing
        if framing is LENGTH:
            take = data[:self.remaining]
            self.remaining -= len(take)
            if self.remaining == 0:
                self.state = DONE
            events.append(("data", take, self.state is DONE))
        elif framing is CLOSE:
            events.append(("data", data, False))
        else:
            parts, _ = self.decoder.feed(data)
            for part in parts:
                if type(part) is ChunkData:
                    events.append(("data", part.data, False))
                elif type(part) is Trailers:
                    events.append(("trailers", trailer_fields(part.headers)))
                    self.state = DONE
            if self.decoder.done and self.state is not DONE:
                self.state = DONE
                events.append(("data", b"", True))

    def finish(self) -> list[tuple]:
        """The machine has finished a body framed by the close: its end."""
        if self.state is BODY and self.framing is CLOSE:
            self.state = DONE
            return [("data", b"", True)]
        return []

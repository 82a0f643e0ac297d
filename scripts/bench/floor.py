"""Scenario 4's floor: the least an HTTP/1.1 relay on uvloop can do, run beside the router to show
how much of the router's cost is its HTTP work and how much is Python, the event loop and sockets.

  python -m scripts.bench.floor --port P --backend PORT [--parsers]

Each client connection gets its own backend connection (what a warm pool gives the router) and its
requests go through one at a time: find the end of the head and send it on as it came, find the
end of the response head and relay Content-Length bytes of body. Nothing else: no checks, routing,
added fields, access log, counters or timeouts, no request bodies or chunked responses (the
benchmark's GETs of static files need none). With `--parsers`, frontgate's own head parsers
(`mux_router.http1_request`, `http1_response`) take both heads apart and the response parser's
Content-Length frames the body: the relay plus exactly the parsing the router does. Not a proxy to deploy: a measuring stick.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import socket

from mux_router.http1 import HttpError
from mux_router.http1_request import RequestHeadParser
from mux_router.http1_response import ResponseHeadParser

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _Backend(asyncio.Protocol):
    def __init__(self, client: "_Client"):
        self.client = client
        self.head = b""                 # a response head not yet whole
        self.remaining: int | None = None   # body bytes still to come; None: reading a head

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self.remaining is None:
            data = self.head + data if self.head else data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.head = data
                return
            self.head = b""
            length = client.content_length(data, end + 4)
            if length is None:
                client.transport.close()
                return
            self.remaining = length - (len(data) - end - 4)
        else:
            self.remaining -= len(data)
        client.transport.write(data)
        if self.remaining <= 0:
            self.remaining = None
            client.next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, backend_port: int, parsers: bool):
        self.backend_port, self.parsers = backend_port, parsers
        self.buf = b""
        self.busy = True                # until the backend connection is up
        self.backend: _Backend | None = None
        self.method = "GET"

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, self.backend = await loop.create_connection(lambda: _Backend(self), "127.0.0.1", self.backend_port)
        except OSError:
            self.transport.close()
            return
        self.next_request()

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            self.busy = False
            return
        head, self.buf = self.buf[:end + 4], self.buf[end + 4:]
        if self.parsers:
            try:
                request = RequestHeadParser().feed(head)
            except HttpError:
                request = None
            if request is None:
                self.transport.close()
                return
            self.method = request.method
        self.busy = True
        self.backend.transport.write(head)

    def content_length(self, data: bytes, head_end: int) -> int | None:
        """Of the response head at the start of `data` (`head_end` bytes); None: refused."""
        if self.parsers:
            try:
                response = ResponseHeadParser(self.method).feed(data)
            except HttpError:
                return None
            return None if response is None else response.content_length or 0
        m = _CONTENT_LENGTH.search(data, 0, head_end)
        return int(m.group(1)) if m else 0

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.transport.close()
        else:
            self.task.cancel()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT (SO_REUSEPORT)")
    p.add_argument("--backend", type=int, required=True, help="the backend's port on 127.0.0.1")
    p.add_argument("--parsers", action="store_true", help="take both heads apart with the router's parsers")
    args = p.parse_args(argv)

    import uvloop

    async def serve() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", args.port))
        sock.listen(4096)
        server = await asyncio.get_running_loop().create_server(
            lambda: _Client(args.backend, args.parsers), sock=sock)
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()

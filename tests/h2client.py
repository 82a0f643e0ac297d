"""A small synchronous HTTP/2 client on the h2 library, for tests that need to send what real
clients do not (floods, resets, stalls): straight to the router behind a PROXY header saying
ALPN h2, or over TLS to the terminator."""
from __future__ import annotations

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame

from frontgate import proxy_protocol


def proxy_header(sni: str | None = "coltrane.localhost", src: str = "203.0.113.20", alpn: str | None = "h2") -> bytes:
    return proxy_protocol.encode(proxy_protocol.ProxyHeader(
        command="PROXY", family="TCP4", src=(src, 40000), dst=("127.0.0.1", 443), authority=sni,
        alpn=alpn, tls_version="TLSv1.3"))


class Response:
    def __init__(self):
        self.headers: list[tuple[bytes, bytes]] = []
        self.informational: list[list[tuple[bytes, bytes]]] = []
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] = []
        self.ended = False
        self.reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    def __init__(self, sock: socket.socket, *, preamble: bytes = b"", settings: dict | None = None,
                 auto_ack: bool = True, past_goaway: bool = False):
        self.sock = sock
        # past_goaway: a GOAWAY is kept here (a GoAwayFrame) and not given to the h2 library,
        # whose state machine refuses every frame after one, so the streams it promised can
        # still be read to their end, as RFC 9113 6.8 wants.
        self.past_goaway = past_goaway
        self.unparsed = b""
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.events: list = []
        sock.sendall(preamble + self.conn.data_to_send())

    @classmethod
    def to_router(cls, port: int, sni: str | None = "coltrane.localhost", **kw) -> "H2Client":
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        return cls(sock, preamble=proxy_header(sni), **kw)

    @classmethod
    def over_tls(cls, port: int, sni: str, context: ssl.SSLContext, **kw) -> "H2Client":
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=sni)
        assert sock.selected_alpn_protocol() == "h2"
        return cls(sock, **kw)

    def send(self, data: bytes = b"") -> None:
        out = self.conn.data_to_send() + data
        if out:
            self.sock.sendall(out)

    def request(self, authority: str, path: str = "/", method: str = "GET", headers=(), body: bytes | None = None,
                end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority.encode()),
                  (b":path", path.encode()), *headers]
        self.conn.send_headers(sid, fields, end_stream=end and body is None)
        self.responses[sid] = Response()
        self.send()
        if body is not None:
            self.send_body(sid, body, end)
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """DATA within the server's windows, reading its WINDOW_UPDATEs as needed."""
        while True:
            n = min(len(body), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if n == 0 and body:
                assert self.read_once(), "closed while sending a body"
                continue
            self.conn.send_data(sid, body[:n], end_stream=end and n == len(body))
            body = body[n:]
            self.send()
            if not body:
                return

    def read_once(self, timeout: float = 10) -> bool:
        """One read; False when the connection is closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self._events(data):
            self.events.append(event)
            r = self.responses.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                r.headers = event.headers
            elif isinstance(event, h2.events.InformationalResponseReceived):
                r.informational.append(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                r.body += event.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                r.trailers = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                r.ended = True
            elif isinstance(event, h2.events.StreamReset) and r is not None:
                r.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.send()
        return True

    def _events(self, data: bytes) -> list:
        if not self.past_goaway:
            return self.conn.receive_data(data)
        buf, events = self.unparsed + data, []
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            chunk, buf = buf[:9 + length], buf[9 + length:]
            if isinstance(frame, GoAwayFrame):
                frame.parse_body(memoryview(chunk[9:]))
                self.goaway = frame
            else:
                events += self.conn.receive_data(chunk)
        self.unparsed = buf
        return events

    def refused(self, sid: int) -> bool:
        """Never processed by the server, so safe to retry on a new connection: above the last
        stream a GOAWAY named, or reset with REFUSED_STREAM."""
        r = self.responses[sid]
        return (r.reset == h2.errors.ErrorCodes.REFUSED_STREAM
                or (self.goaway is not None and sid > self.goaway.last_stream_id and not r.headers))

    def wait(self, predicate, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or not self.read_once(left):
                return predicate()
        return True

    def get(self, authority: str, path: str = "/", **kw) -> Response:
        sid = self.request(authority, path, **kw)
        r = self.responses[sid]
        assert self.wait(lambda: r.ended or r.reset is not None), f"no response on stream {sid}"
        return r

    def wait_closed(self, timeout: float = 10) -> bool:
        return self.wait(lambda: self.closed, timeout)

    def close(self) -> None:
        self.sock.close()

"""The heads the router writes: requests to backends, responses to clients, its own answers.
Pure functions; the server decides when to send them."""
from __future__ import annotations

from http import HTTPStatus

from mux_router.http1 import RequestHead, ResponseHead

# Hop-by-hop fields (RFC 9110 7.6.1) describe one connection, never the next one. Transfer-Encoding
# is hop-by-hop too, but the router forwards chunked bodies as they are, so it stays.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade", b"http2-settings"})
# What a client may not remove by naming it in Connection: the fields that frame the message and
# pick the host. Dropping one would make the backend see a different message than the router did.
PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})
FORWARDED_FOR = b"x-forwarded-for"
FORWARDED_PROTO = b"x-forwarded-proto"
CRLF = b"\r\n"


def _start_line(raw: bytes) -> bytes:
    return raw.split(CRLF, 1)[0]


def _end_to_end(headers, connection_tokens: frozenset[bytes], keep: frozenset[bytes] = frozenset()):
    """The fields that go on to the next hop: hop-by-hop ones and those the sender listed in its
    Connection header are dropped, except `keep`."""
    for name, value in headers:
        lname = name.lower()
        if lname in keep:
            yield name, value
        elif lname in HOP_BY_HOP or (lname in connection_tokens and lname not in PROTECTED):
            continue
        else:
            yield name, value


def backend_request_head(head: RequestHead, *, client_ip: str, scheme: str, client_trusted: bool,
                         keep_alive: bool = False) -> bytes:
    """The head sent to the backend: the client's request line and fields, hop-by-hop fields
    replaced by ours, X-Forwarded-For (appended to the client's only when the client is trusted:
    anyone else could forge it) and X-Forwarded-Proto (the listener's scheme)."""
    lines = [_start_line(head.raw)]
    earlier_hops: list[bytes] = []
    keep = frozenset({b"upgrade"}) if head.is_websocket_upgrade else frozenset()
    for name, value in _end_to_end(head.headers, head.connection_tokens, keep):
        lname = name.lower()
        if lname == FORWARDED_FOR:
            if client_trusted:
                earlier_hops.append(value)
        elif lname != FORWARDED_PROTO:
            lines.append(name + b": " + value)
    if head.is_websocket_upgrade:
        lines.append(b"Connection: Upgrade")
    else:
        lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    lines.append(b"X-Forwarded-For: " + b", ".join(earlier_hops + [client_ip.encode()]))
    lines.append(b"X-Forwarded-Proto: " + scheme.encode())
    return CRLF.join(lines) + CRLF + CRLF


def client_response_head(resp: ResponseHead, *, keep_alive: bool, client_version: str) -> bytes:
    """The backend's response head as the client gets it: the backend's connection management
    replaced by the router's (the two connections are independent)."""
    switching = resp.status == 101
    lines = [_start_line(resp.raw)]
    keep = frozenset({b"upgrade"}) if switching else frozenset()
    lines += [name + b": " + value for name, value in _end_to_end(resp.headers, resp.connection_tokens, keep)]
    if switching:
        lines.append(b"Connection: Upgrade")
    elif not resp.informational:
        if not keep_alive:
            lines.append(b"Connection: close")
        elif client_version == "HTTP/1.0":
            lines.append(b"Connection: keep-alive")
    return CRLF.join(lines) + CRLF + CRLF


def simple_response(status: int, *, close: bool, location: str | None = None, detail: str = "",
                    with_body: bool = True) -> bytes:
    """The router's own small answers (errors and redirects): a short text body, always a
    Content-Length, `Connection: close` when the router closes the connection after it."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n".encode()
    if detail:
        body += f"{detail}\n".encode("ascii", "replace")
    lines = [f"HTTP/1.1 {status} {phrase}".encode(),
             b"Content-Type: text/plain; charset=utf-8",
             b"Content-Length: " + str(len(body)).encode()]
    if status >= 400:
        lines.append(b"Cache-Control: no-store")     # an error now says nothing about later
    if location is not None:
        lines.append(b"Location: " + location.encode("latin-1"))
    if close:
        lines.append(b"Connection: close")
    return CRLF.join(lines) + CRLF + CRLF + (body if with_body else b"")

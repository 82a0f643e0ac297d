"""The heads the router writes: requests to backends, responses to clients, its own answers.
Pure functions; the server decides when to send them."""
from __future__ import annotations

import functools
import re
from http import HTTPStatus
from typing import Mapping

from frontgate.config import CLIENT_CERT_SUBJECT_FIELD, NO_HEADER_RULES, ErrorPage, HeaderRules
from mux_router.field_names import any_spelling, fold
from mux_router.http1 import HOP_BY_HOP
from mux_router.http1_request import RequestHead
from mux_router.http1_response import ResponseHead

# What a client may not remove by naming it in Connection: the fields that frame the message and
# pick the host. Dropping one would make the backend see a different message than the router did.
PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})
CRLF = b"\r\n"


def _start_line(raw: bytes) -> bytes:
    return raw.split(CRLF, 1)[0]


def _raw_as_forwarded(head: RequestHead) -> bytes:
    """The client's head with the request line the backend is to read: the target with its
    normalised path (RequestHead.forward_target), the one the router judged."""
    if head.forward_target == head.target:
        return head.raw
    line = f"{head.method} {head.forward_target} {head.version}".encode()
    return line + head.raw[head.raw.find(CRLF):]


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


# Fields that say who the client is. Anyone can send them, so they are believed (and extended)
# only from trusted_sources; from anyone else they are dropped and the router's own sent.
FORWARDED_FIELDS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                              b"forwarded"})
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# The verified client certificate's subject (CN), from the PROXY header. Only the router writes
# it: a client's own, from any source on any listener, is always dropped.
CLIENT_CERT_SUBJECT = CLIENT_CERT_SUBJECT_FIELD.encode()
_CLIENT_CERT_SUBJECT_LOWER = CLIENT_CERT_SUBJECT.lower()
# The fields the router writes itself, folded (field_names.fold): a client's copy, in any spelling
# a backend would read as one of them, never reaches the backend as it came. The dash spelling of
# a forwarding field from a trusted source is the one exception (believed and extended); its
# underscore spellings are dropped from everyone: a trusted proxy writes the dash form, so an
# underscore form came through it from its own client.
ROUTER_OWNED = FORWARDED_FIELDS | {_CLIENT_CERT_SUBJECT_LOWER}
# The other X-Forwarded-* fields (-Port, -Ssl, -Prefix, -Server ...) the router does not write,
# but frameworks read them to tell the scheme, port or path the client used: the namespace is the
# router's. They go on only from trusted_sources, and only in their dash spelling.
FORWARDED_PREFIX = b"x-forwarded-"


def is_owned(folded: bytes, owned: frozenset[bytes]) -> bool:
    """A folded field name is the router's: in `owned` (owned_fields) or in the X-Forwarded-* space."""
    return folded in owned or folded.startswith(FORWARDED_PREFIX)


_UNSAFE_IN_VALUE = frozenset(range(0x20)) | {0x7F, ord("%")}


# A request head's field lines that the router drops or rewrites (the parser has checked them:
# `name:value`, no space before the colon), found with one search instead of a loop over the
# fields: a head without any (nearly all) goes on as it came, with the router's fields added at its
# end. Connection is among them, so a head whose Connection names other fields matches too; the
# owned fields in every spelling a backend may fold to theirs.
_REQUEST_REWRITE_RE = re.compile(rb"\r\n(?:" + any_spelling(HOP_BY_HOP | ROUTER_OWNED | FRAMING) + rb":|"
                                 + any_spelling((FORWARDED_PREFIX,)) + rb")")


def client_cert_subject_line(subject: str) -> bytes:
    """The field line for a client certificate subject (once per connection). UTF-8; control
    characters (a CN may hold anything its CA signed) and "%" are %XX-escaped, so that the value
    can never end the line or the head, and stays reversible."""
    raw = subject.encode("utf-8")
    if any(b in _UNSAFE_IN_VALUE for b in raw):
        raw = b"".join(b"%%%02X" % b if b in _UNSAFE_IN_VALUE else bytes((b,)) for b in raw)
    return CLIENT_CERT_SUBJECT + b": " + raw.strip(b" \t")


@functools.lru_cache(maxsize=1024)
def _compiled(rules: HeaderRules) -> tuple[frozenset[bytes], list[bytes]]:
    """(folded names to drop, field lines to add) for a rule set; computed once per config. The
    names a rule sets or deletes are the router's for that app, like ROUTER_OWNED."""
    skip = frozenset(fold(n.encode()) for n in rules.delete) | frozenset(fold(n.encode()) for n, _ in rules.set)
    return skip, [f"{n}: {v}".encode() for n, v in rules.set + rules.add]


@functools.lru_cache(maxsize=1024)
def owned_fields(rules: HeaderRules = NO_HEADER_RULES) -> frozenset[bytes]:
    """The folded names a client may not send to an app whose request rules are `rules`: the
    router's own and those the rules set or delete. For trailers (request_trailers.py): there no
    copy is believed, from any source."""
    return ROUTER_OWNED | _compiled(rules)[0]


_NO_RULES_COMPILED: tuple[frozenset[bytes], list[bytes]] = (frozenset(), [])


def _forwarded_node(ip: str) -> str:
    # RFC 7239 6: IPv6 in brackets, and then the value must be a quoted-string.
    return f'"[{ip}]"' if ":" in ip else ip


def _request_fields(head: RequestHead, skip: frozenset[bytes], client_trusted: bool,
                    sent: dict[bytes, list[bytes]]) -> list[bytes]:
    """The client's field lines that go on to the backend; the forwarding fields a trusted client
    sent are collected in `sent` (the router writes its own)."""
    lines = []
    keep = frozenset({b"upgrade"}) if head.is_websocket_upgrade else frozenset()
    framed = False          # the framing field has been written, in its one canonical form
    for name, value in _end_to_end(head.headers, head.connection_tokens, keep):
        lname = fold(name)
        if lname in ROUTER_OWNED:
            if client_trusted and lname in FORWARDED_FIELDS and b"_" not in name:
                sent.setdefault(lname, []).append(value)
        elif lname.startswith(FORWARDED_PREFIX):
            if client_trusted and b"_" not in name and lname not in skip:
                lines.append(name + b": " + value)
        elif lname in FRAMING:
            # RFC 9110 8.6 / 9112 6.1: one field saying exactly what the router framed the body
            # by, so that the backend cannot read ",chunked" or "5, 5" another way.
            if not framed:
                lines.append(b"Transfer-Encoding: chunked" if head.chunked
                             else b"Content-Length: " + str(head.content_length).encode())
                framed = True
        elif lname not in skip:
            lines.append(name + b": " + value)
    return lines


def backend_request_head(head: RequestHead, *, client_ip: str, scheme: str, client_trusted: bool,
                         keep_alive: bool = False, forwarded_for: str = "append", forwarded: bool = False,
                         rules: HeaderRules = NO_HEADER_RULES, client_cert_line: bytes | None = None) -> bytes:
    """The head sent to the backend: the client's request line (its target normalised) and fields, hop-by-hop fields
    replaced by ours, the app's header rules applied, and the forwarding fields: X-Forwarded-For
    (appended to a trusted client's list in `append` mode, else just the client), X-Forwarded-Proto
    (the listener's scheme), X-Forwarded-Host, X-Real-IP (this hop's view, whoever sent them
    before) and, when `forwarded`, RFC 7239 Forwarded (appended like X-Forwarded-For). Any
    X-Client-Cert-Subject the client sent is dropped; `client_cert_line` (from
    client_cert_subject_line) is the router's own, for a connection with a verified client cert."""
    sent: dict[bytes, list[bytes]] = {}     # the forwarding fields the (trusted) client sent
    skip, extra = _NO_RULES_COMPILED if rules is NO_HEADER_RULES else _compiled(rules)
    raw = _raw_as_forwarded(head)
    if not (skip or _REQUEST_REWRITE_RE.search(raw)):
        # Nothing of the client's to drop or replace: its head as it came, ours appended.
        lines = [raw[:-4]]
    else:
        lines = [_start_line(raw)] + _request_fields(head, skip, client_trusted, sent)
    lines += extra
    if client_cert_line is not None:
        lines.append(client_cert_line)
    if head.is_websocket_upgrade:
        lines.append(b"Connection: Upgrade")
    else:
        lines.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
    ip = client_ip.encode()
    earlier = sent.get(b"x-forwarded-for", []) if forwarded_for == "append" else []
    lines.append(b"X-Forwarded-For: " + b", ".join(earlier + [ip]))
    lines.append(b"X-Forwarded-Proto: " + scheme.encode())
    if head.host_as_sent is not None:
        lines.append(b"X-Forwarded-Host: " + head.host_as_sent.encode("latin-1"))
    lines.append(b"X-Real-IP: " + ip)
    if forwarded:
        element = f"for={_forwarded_node(client_ip)};proto={scheme}"
        if head.host_as_sent is not None:
            element += f';host="{head.host_as_sent}"'
        earlier = sent.get(b"forwarded", []) if forwarded_for == "append" else []
        lines.append(b"Forwarded: " + b", ".join(earlier + [element.encode("latin-1")]))
    return CRLF.join(lines) + CRLF + CRLF


def client_response_head(resp: ResponseHead, *, keep_alive: bool, client_version: str,
                         rules: HeaderRules = NO_HEADER_RULES) -> bytes:
    """The backend's response head as the client gets it: the backend's connection management
    replaced by the router's (the two connections are independent), the app's rules applied."""
    switching = resp.status == 101
    skip, extra = _NO_RULES_COMPILED if rules is NO_HEADER_RULES or resp.informational else _compiled(rules)
    if not (switching or skip) and resp.connection_tokens <= HOP_BY_HOP:
        # Only the hop-by-hop lines go (nginx's "Connection: keep-alive"): the parser has cut them.
        out = resp.end_to_end
        if extra:
            out = CRLF.join([out, *extra])
    else:
        keep = frozenset({b"upgrade"}) if switching else frozenset()
        lines = [_start_line(resp.raw)]
        lines += [name + b": " + value for name, value in _end_to_end(resp.headers, resp.connection_tokens, keep)
                  if fold(name) not in skip]
        out = CRLF.join(lines + extra)
    if switching:
        return out + b"\r\nConnection: Upgrade\r\n\r\n"
    if not resp.informational:
        if not keep_alive:
            return out + b"\r\nConnection: close\r\n\r\n"
        if client_version == "HTTP/1.0":
            return out + b"\r\nConnection: keep-alive\r\n\r\n"
    return out + b"\r\n\r\n"


def error_page(status: int, app_pages: Mapping[int, ErrorPage], router_pages: Mapping[int, ErrorPage]) -> ErrorPage | None:
    """The page for one of the router's own answers: the app's for that status, else the router's."""
    return app_pages.get(status) or router_pages.get(status)


def simple_response(status: int, *, close: bool, location: str | None = None, detail: str = "",
                    with_body: bool = True, page: ErrorPage | None = None,
                    retry_after: int | None = None) -> bytes:
    """The router's own small answers (errors and redirects): a short text body (or the app's
    error page for that status), always a Content-Length, `Retry-After` on a 503 when given,
    `Connection: close` when the router closes the connection after it."""
    phrase = HTTPStatus(status).phrase
    if page is not None:
        body, content_type = page.body, page.content_type.encode()
    else:
        body, content_type = f"{status} {phrase}\n".encode(), b"text/plain; charset=utf-8"
        if detail:
            body += f"{detail}\n".encode("ascii", "replace")
    lines = [f"HTTP/1.1 {status} {phrase}".encode(),
             b"Content-Type: " + content_type,
             b"Content-Length: " + str(len(body)).encode()]
    if status >= 400:
        lines.append(b"Cache-Control: no-store")     # an error now says nothing about later
    if status == 503 and retry_after is not None:
        lines.append(b"Retry-After: " + str(retry_after).encode())
    if location is not None:
        lines.append(b"Location: " + location.encode("latin-1"))
    if close:
        lines.append(b"Connection: close")
    return CRLF.join(lines) + CRLF + CRLF + (body if with_body else b"")

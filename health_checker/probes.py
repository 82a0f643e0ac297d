"""One health check of one server: a TCP connect, a TLS handshake, or an HTTP/1.1 request whose
status must be in the expected ranges (and whose body may have to contain a string).

The pure parts (request bytes, status line and head parsing, judging status and body, the Host
header to send) are plain functions, unit-tested without sockets; `probe()` is the thin asyncio
part around them.
"""
from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl
import time
from dataclasses import dataclass

from frontgate import proxy_protocol
from frontgate.config import Address, App, CheckSpec, StatusRanges

MAX_STATUS_LINE = 8192     # bytes read before giving up on finding the end of the status line
MAX_HEAD = 65536           # the whole response head, when the body is looked at
MAX_BODY = 65536           # expect_body is searched in this much of the body
USER_AGENT = "frontgate-health-checker"

# A probe of a send_proxy server is the checker's own connection, not a client's: PROXY v2 LOCAL
# says exactly that (the receiver takes the socket's addresses), as HAProxy's checks do with
# send-proxy-v2. A PROXY header naming the checker's address would say the same at more length,
# and a backend that logs or rate-limits by client address would count checks as client traffic.
PROXY_LOCAL = proxy_protocol.LOCAL_HEADER

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n?")
_SAFE_TARGET = re.compile(r"/[\x21-\x7e]*")       # visible ASCII: no spaces, no CR/LF smuggling
_SAFE_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]+")


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    took_ms: float
    detail: str            # "HTTP 200", "connection refused", "timeout after 1s (connecting)", ...

    def as_dict(self) -> dict:
        """The `last_check` object of the state file."""
        return {"ok": self.ok, "took_ms": round(self.took_ms, 3), "detail": self.detail}


# --------------------------------------------------------------------------- pure parts

def check_host(app: App, spec: CheckSpec, address: Address) -> str:
    """The Host header of an HTTP check: the configured one, else the app's first exact host name
    (the backend may route on it), else the server's own address."""
    if spec.host:
        return spec.host
    exact = next((h for h in app.hosts if not h.startswith("*")), None)
    if exact:
        return exact
    return "localhost" if address.is_unix else str(address)


def build_request(path: str, host: str, method: str = "GET") -> bytes:
    if not _SAFE_TARGET.fullmatch(path):
        raise ValueError(f"check path {path!r} must be '/' followed by visible ASCII characters")
    if not _SAFE_HOST.fullmatch(host):
        raise ValueError(f"check host {host!r} is not a valid Host header value")
    # Connection: close, so the server ends the exchange and no idle connection is left behind.
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")


def parse_status_line(line: bytes) -> int:
    """The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK\\r\\n`); ValueError otherwise."""
    m = _STATUS_LINE.fullmatch(line)
    if not m:
        shown = line[:60].decode("latin-1").rstrip("\r\n")
        raise ValueError(f"not an HTTP/1.x status line: {shown!r}")
    return int(m.group(2))


def format_ranges(ranges: StatusRanges) -> str:
    return ",".join(f"{low}" if low == high else f"{low}-{high}" for low, high in ranges)


def judge_status(status: int, expect: StatusRanges) -> tuple[bool, str]:
    if any(low <= status <= high for low, high in expect):
        return True, f"HTTP {status}"
    return False, f"HTTP {status} (expected {format_ranges(expect)})"


def body_framing(head: bytes) -> tuple[str, int | None]:
    """How the body after this response head is framed: ("chunked", None), ("length", n) or
    ("close", None) (read to EOF). Only what a health check needs; the router has the strict parser."""
    chunked, length = False, None
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"transfer-encoding" and value.endswith(b"chunked"):
            chunked = True
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    if chunked:
        return "chunked", None
    return ("length", length) if length is not None else ("close", None)


def dechunk(data: bytes) -> bytes:
    """The payload of a (possibly truncated) chunked body: what arrived, without the framing."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        size_text = data[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def judge_body(body: bytes, expect: str, truncated: bool) -> tuple[bool, str]:
    if expect.encode() in body:
        return True, ""
    where = f"the first {len(body)} bytes of the body" if truncated else "the body"
    return False, f"body mismatch: {expect!r} not in {where}"


def describe_error(e: BaseException) -> str:
    """A short, stable reason for a failed check, for the log and the state file."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed before the status line" if e.partial else "connection closed without a response"
    if isinstance(e, asyncio.LimitOverrunError):
        return f"no status line within {MAX_STATUS_LINE} bytes"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host: {e.strerror}"
    if isinstance(e, OSError) and e.errno is not None:
        return (e.strerror or errno.errorcode.get(e.errno, str(e.errno))).lower()
    return str(e) or type(e).__name__


# --------------------------------------------------------------------------- the I/O

async def probe(address: Address, spec: CheckSpec, host: str, send_proxy: bool = False) -> ProbeResult:
    """Run one check; never raises (except cancellation): every failure is a ProbeResult.
    `send_proxy`: the server expects a PROXY v2 header first; a probe sends LOCAL (see PROXY_LOCAL)."""
    start = time.perf_counter()
    try:
        request = build_request(spec.path, host, spec.method) if spec.type == "http" else b""
    except ValueError as e:
        return ProbeResult(ok=False, took_ms=0.0, detail=f"bad check: {e}")
    phase = "connecting"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            tls = _client_context(spec.tls_verify) if spec.type == "tls" else None
            # SNI: a name, never an address (RFC 6066); Python sends none for an IP anyway.
            sni = (host.rsplit(":", 1)[0].strip("[]") if not address.is_unix else host) if tls else None
            if tls is not None:
                phase = "TLS handshake"
            limit = MAX_HEAD if spec.expect_body else MAX_STATUS_LINE
            # With a PROXY header, TLS starts after it: the connection is opened plain first.
            first_tls = None if send_proxy else tls
            if address.is_unix:
                reader, writer = await asyncio.open_unix_connection(address.path, limit=limit, ssl=first_tls,
                                                                    server_hostname=sni if first_tls else None)
            else:
                reader, writer = await asyncio.open_connection(address.host, address.port, limit=limit,
                                                               ssl=first_tls, server_hostname=sni if first_tls else None)
            if send_proxy:
                writer.write(PROXY_LOCAL)
                if tls is not None:
                    await writer.start_tls(tls, server_hostname=sni)
            if spec.type == "tcp":
                ok, detail = True, "connected"
            elif spec.type == "tls":
                ok, detail = True, f"TLS handshake ok ({writer.get_extra_info('ssl_object').version()})"
            else:
                phase = "waiting for the response"
                writer.write(request)
                line = await reader.readuntil(b"\n")
                ok, detail = judge_status(parse_status_line(line), spec.expect_status)
                if ok and spec.expect_body:
                    phase = "reading the body"
                    ok, body_detail = await _check_body(reader, line, spec.expect_body)
                    if not ok:
                        detail = f"{detail}, {body_detail}"
    except TimeoutError:
        ok, detail = False, f"timeout after {spec.timeout:g}s ({phase})"
    except asyncio.CancelledError:
        raise
    except ssl.SSLError as e:
        ok, detail = False, f"TLS handshake failed: {_ssl_reason(e)}"
    except ValueError as e:      # from parse_status_line
        ok, detail = False, f"bad response: {e}"
    except Exception as e:       # any socket error is a failed check, not a checker crash
        ok, detail = False, describe_error(e)
    finally:
        if writer is not None:
            writer.close()       # no need to wait: the check is over either way
    return ProbeResult(ok=ok, took_ms=(time.perf_counter() - start) * 1000, detail=detail)


async def _check_body(reader: asyncio.StreamReader, status_line: bytes, expect: str) -> tuple[bool, str]:
    head = bytearray(status_line)
    while True:        # header lines up to the empty one; the reader's limit bounds each line
        line = await reader.readuntil(b"\n")
        if line in (b"\r\n", b"\n"):
            break
        head += line
        if len(head) > MAX_HEAD:
            return False, f"response head larger than {MAX_HEAD} bytes"
    framing, length = body_framing(bytes(head).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    want = MAX_BODY + 1 if length is None else min(length, MAX_BODY + 1)
    # Connection: close was asked for: the body ends at EOF at the latest; read no more than we search.
    body = bytearray()
    while len(body) < want:
        chunk = await reader.read(want - len(body))
        if not chunk:
            break
        body += chunk
        if framing != "chunked" and expect.encode() in body:
            break
    data = dechunk(bytes(body)) if framing == "chunked" else bytes(body)
    return judge_body(data[:MAX_BODY], expect, truncated=len(data) > MAX_BODY)


def _client_context(verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context()
    # A health check asks "does the TLS stack answer", not "do I trust it": backends often have
    # self-signed certificates. tls_verify = true checks the chain and the name as well.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _ssl_reason(e: ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return e.verify_message or "certificate verify failed"
    return (e.reason or str(e)).lower().replace("_", " ")

"""One health check of one server: a TCP connect, or an HTTP/1.1 GET whose status must fall in a range.

The pure parts (request bytes, status line parsing, judging the status, the Host header to send)
are plain functions, unit-tested without sockets; `probe()` is the thin asyncio part around them.
"""
from __future__ import annotations

import asyncio
import errno
import re
import socket
import time
from dataclasses import dataclass

from frontgate.config import Address, App, CheckSpec

MAX_STATUS_LINE = 8192     # bytes read before giving up on finding the end of the status line
USER_AGENT = "frontgate-health-checker"

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
    exact = next((h for h in app.hosts if not h.startswith("*.")), None)
    if exact:
        return exact
    return "localhost" if address.is_unix else str(address)


def build_request(path: str, host: str) -> bytes:
    if not _SAFE_TARGET.fullmatch(path):
        raise ValueError(f"check path {path!r} must be '/' followed by visible ASCII characters")
    if not _SAFE_HOST.fullmatch(host):
        raise ValueError(f"check host {host!r} is not a valid Host header value")
    # Connection: close, so the server ends the exchange and no idle connection is left behind.
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")


def parse_status_line(line: bytes) -> int:
    """The status code of an HTTP/1.x status line (`HTTP/1.1 200 OK\\r\\n`); ValueError otherwise."""
    m = _STATUS_LINE.fullmatch(line)
    if not m:
        shown = line[:60].decode("latin-1").rstrip("\r\n")
        raise ValueError(f"not an HTTP/1.x status line: {shown!r}")
    return int(m.group(2))


def judge_status(status: int, expect: tuple[int, int]) -> tuple[bool, str]:
    low, high = expect
    if low <= status <= high:
        return True, f"HTTP {status}"
    wanted = f"{low}" if low == high else f"{low}-{high}"
    return False, f"HTTP {status} (expected {wanted})"


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

async def probe(address: Address, spec: CheckSpec, host: str) -> ProbeResult:
    """Run one check; never raises (except cancellation): every failure is a ProbeResult."""
    start = time.perf_counter()
    try:
        request = build_request(spec.path, host) if spec.type == "http" else b""
    except ValueError as e:
        return ProbeResult(ok=False, took_ms=0.0, detail=f"bad check: {e}")
    phase = "connecting"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            if address.is_unix:
                reader, writer = await asyncio.open_unix_connection(address.path, limit=MAX_STATUS_LINE)
            else:
                reader, writer = await asyncio.open_connection(address.host, address.port, limit=MAX_STATUS_LINE)
            if spec.type == "tcp":
                ok, detail = True, "connected"
            else:
                phase = "waiting for the response"
                writer.write(request)
                line = await reader.readuntil(b"\n")
                ok, detail = judge_status(parse_status_line(line), spec.expect_status)
    except TimeoutError:
        ok, detail = False, f"timeout after {spec.timeout:g}s ({phase})"
    except asyncio.CancelledError:
        raise
    except ValueError as e:      # from parse_status_line
        ok, detail = False, f"bad response: {e}"
    except Exception as e:       # any socket error is a failed check, not a checker crash
        ok, detail = False, describe_error(e)
    finally:
        if writer is not None:
            writer.close()       # no need to wait: the check is over either way
    return ProbeResult(ok=ok, took_ms=(time.perf_counter() - start) * 1000, detail=detail)


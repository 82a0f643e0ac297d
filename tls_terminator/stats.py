"""The terminator's counters and its admin listener (/metrics, /stats, /stats.json).

TerminatorStats holds plain ints and small dicts. Bytes are counted per connection (one attribute
add per read or write on the connection object) and added to the totals when the connection ends;
a scrape adds the open connections' counts.
"""
from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

from OpenSSL import SSL

from frontgate import package_version
from frontgate.admin_http import AdminEndpoint
from frontgate.metrics import Family, Values

if TYPE_CHECKING:
    from tls_terminator.terminator import Terminator

STAGE = "tls-terminator"
PREFIX = "frontgate_terminator_"
EXPIRY_WARNING_DAYS = 14
MAX_NAMES_LABEL = 200          # certificate names in one label value, truncated beyond this

FAMILIES = (
    Family("connections_total", "counter", "client connections accepted"),
    Family("active_connections", "gauge", "open client connections (TLS and passthrough)"),
    Family("handshakes_total", "counter", "completed TLS handshakes, by protocol version", ("version",)),
    Family("handshake_failures_total", "counter",
           "TLS handshakes that failed, by reason (timeout, closed, no_shared_cipher, protocol_version, "
           "http_request, bad_client_hello, client_alert, client_certificate, reset, other)", ("reason",)),
    Family("bytes_in_total", "counter", "bytes received from clients (TLS records, passthrough bytes)"),
    Family("bytes_out_total", "counter", "bytes sent to clients"),
    Family("passthrough_connections_total", "counter", "connections relayed undecrypted by a [[passthrough]] route"),
    Family("max_connections_reached_total", "counter",
           "times accepting paused at max_connections (new clients wait in the kernel's backlog)"),
    Family("certificate_expiry_timestamp_seconds", "gauge",
           "notAfter of each loaded certificate (unix time)", ("file", "names"), merge="own"),
)

# OpenSSL reason strings (lower case) -> a short label. First match wins.
_REASONS = (
    ("no shared cipher", "no_shared_cipher"),
    ("no suitable signature algorithm", "no_shared_cipher"),
    ("unsupported protocol", "protocol_version"),
    ("version too low", "protocol_version"),
    ("protocol version", "protocol_version"),      # "tlsv1 alert protocol version"
    ("http request", "http_request"),              # plain HTTP to the TLS port
    ("https proxy request", "http_request"),
    ("peer did not return a certificate", "client_certificate"),
    ("certificate verify failed", "client_certificate"),
    ("alert", "client_alert"),                     # the client gave up (unknown CA, bad certificate, ...)
    ("wrong version number", "bad_client_hello"),  # not a TLS record at all
    ("unexpected message", "bad_client_hello"),
    ("packet length too long", "bad_client_hello"),
    ("record layer failure", "bad_client_hello"),
    ("length mismatch", "bad_client_hello"),
    ("bad packet", "bad_client_hello"),
    ("decode error", "bad_client_hello"),
    ("bad extension", "bad_client_hello"),
)


def handshake_failure_reason(error: BaseException) -> str:
    """A short label for why a handshake failed, from pyOpenSSL's error (its OpenSSL reason strings)."""
    if isinstance(error, SSL.SysCallError):
        return "reset"
    if isinstance(error, SSL.ZeroReturnError):
        return "closed"
    text = " ".join(str(part[-1]) if isinstance(part, tuple) and part else str(part)
                    for part in (error.args[0] if error.args and isinstance(error.args[0], list) else error.args))
    text = text.lower()
    for needle, label in _REASONS:
        if needle in text:
            return label
    return "other"


class TerminatorStats:
    __slots__ = ("connections", "handshakes", "failures", "bytes_in", "bytes_out", "passthrough", "at_limit")

    def __init__(self):
        self.connections = 0
        self.handshakes: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.bytes_in = 0          # of connections that have ended
        self.bytes_out = 0
        self.passthrough = 0
        self.at_limit = 0

    def handshake_ok(self, version: str | None) -> None:
        version = version or "unknown"
        self.handshakes[version] = self.handshakes.get(version, 0) + 1

    def handshake_failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def connection_done(self, conn) -> None:
        self.bytes_in += conn.bytes_in
        self.bytes_out += conn.bytes_out

    def values(self, open_connections=()) -> Values:
        bytes_in, bytes_out = self.bytes_in, self.bytes_out
        n = 0
        for conn in open_connections:
            bytes_in += conn.bytes_in
            bytes_out += conn.bytes_out
            n += 1
        return {
            "connections_total": {(): self.connections},
            "active_connections": {(): n},
            "handshakes_total": {(v,): c for v, c in self.handshakes.items()},
            "handshake_failures_total": {(r,): c for r, c in self.failures.items()},
            "bytes_in_total": {(): bytes_in},
            "bytes_out_total": {(): bytes_out},
            "passthrough_connections_total": {(): self.passthrough},
            "max_connections_reached_total": {(): self.at_limit},
        }


def names_label(names) -> str:
    text = ",".join(names) or "-"
    return text if len(text) <= MAX_NAMES_LABEL else text[:MAX_NAMES_LABEL - 3] + "..."


class TerminatorAdmin(AdminEndpoint):
    def __init__(self, terminator: "Terminator"):
        self.terminator = terminator
        super().__init__(STAGE, PREFIX, FAMILIES, terminator.cfg.admin, self._live, self._page_data,
                         "active_connections", "connections_total")

    def _live(self) -> Values:
        t = self.terminator
        values = t.stats.values(t.connections)
        values["certificate_expiry_timestamp_seconds"] = {
            (str(c.entry.cert), names_label(c.names)): c.not_after.timestamp() for c in t.store.certificates}
        return values

    def _page_data(self, merged: Values, rates: Values, processes: list[dict]) -> dict:
        return terminator_page_data(self.terminator, merged, rates, processes, self.started)


def terminator_page_data(terminator: "Terminator", merged: Values, rates: Values, processes: list[dict],
                         started: float) -> dict:
    ver = package_version()
    now = time.time()
    now_dt = datetime.datetime.now(datetime.timezone.utc)
    one = lambda name: sum(merged.get(name, {}).values())      # noqa: E731
    certificates = []
    for c in terminator.store.certificates:
        certificates.append({
            "file": str(c.entry.cert), "names": list(c.names), "key_type": c.key_detail,
            "not_after": c.not_after.isoformat(), "not_after_ts": c.not_after.timestamp(),
            "days_left": (c.not_after - now_dt).total_seconds() / 86400,
            "default": c is terminator.store.default,
        })
    return {
        "stage": STAGE, "version": ver, "now": now, "started": started,
        "processes": [dict(p, uptime=round(now - p["started"], 1)) for p in processes],
        "connections": one("active_connections"),
        "connections_total": one("connections_total"),
        "connection_rate": round(sum(rates.get("connections_total", {}).values()), 2),
        "handshakes": {labels[0]: n for labels, n in sorted(merged.get("handshakes_total", {}).items())},
        "handshakes_total": one("handshakes_total"),
        "handshake_rate": round(sum(rates.get("handshakes_total", {}).values()), 2),
        "failures": {labels[0]: n for labels, n in sorted(merged.get("handshake_failures_total", {}).items())},
        "failures_total": one("handshake_failures_total"),
        "bytes_in": one("bytes_in_total"), "bytes_out": one("bytes_out_total"),
        "passthrough": one("passthrough_connections_total"),
        "max_connections_reached": one("max_connections_reached_total"),
        "max_connections": terminator.cfg.max_connections,
        "listen": str(terminator.cfg.listen), "forward_to": str(terminator.cfg.forward_to),
        "certificates": certificates,
        "expiry_warning_days": EXPIRY_WARNING_DAYS,
    }

"""cert-manager's counters and its admin listener: /metrics (Prometheus, as the other stages),
/stats.json and /stats (both JSON: each name's state, as `frontgate certs` shows it)."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from frontgate.admin_http import AdminEndpoint, Page
from frontgate.metrics import METRICS_CONTENT_TYPE, Family, Values, render_prometheus

if TYPE_CHECKING:
    from cert_manager.manager import Manager

STAGE = "cert-manager"
PREFIX = "frontgate_cert_manager_"

FAMILIES = (
    Family("issued_total", "counter", "certificates obtained for a name that had none", ("name",)),
    Family("renewed_total", "counter", "certificates obtained to replace one in use", ("name",)),
    Family("failures_total", "counter", "orders that failed (the certificate in use stays)", ("name",)),
    Family("bad_nonces_total", "counter", "requests the CA refused with badNonce (each was retried)"),
    Family("orders_in_progress", "gauge", "orders being worked on now (0 or 1)"),
    Family("consecutive_failures", "gauge", "failed attempts in a row per name", ("name",), merge="own"),
    Family("certificate_expiry_timestamp_seconds", "gauge", "notAfter of the certificate in use (unix time)",
           ("name",), merge="own"),
    Family("next_attempt_timestamp_seconds", "gauge", "when cert-manager next orders for the name (unix time)",
           ("name",), merge="own"),
)


class Counters:
    def __init__(self):
        self.issued: dict[str, int] = {}
        self.renewed: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.bad_nonces = 0
        self.in_progress = 0

    @staticmethod
    def bump(table: dict[str, int], name: str) -> None:
        table[name] = table.get(name, 0) + 1


class CertManagerAdmin(AdminEndpoint):
    def __init__(self, manager: "Manager"):
        self.manager = manager
        super().__init__(STAGE, PREFIX, FAMILIES, manager.cfg.admin, self._live, self._page_data,
                         "orders_in_progress", "issued_total")

    def _live(self) -> Values:
        m, c = self.manager, self.manager.counters
        states = m.states.values()
        return {
            "issued_total": {(n,): v for n, v in c.issued.items()},
            "renewed_total": {(n,): v for n, v in c.renewed.items()},
            "failures_total": {(n,): v for n, v in c.failures.items()},
            "bad_nonces_total": {(): c.bad_nonces},
            "orders_in_progress": {(): c.in_progress},
            "consecutive_failures": {(s.name,): s.failures for s in states},
            "certificate_expiry_timestamp_seconds": {(s.name,): s.not_after for s in states if s.not_after},
            "next_attempt_timestamp_seconds": {(s.name,): s.next_attempt for s in states if s.next_attempt},
        }

    def _page_data(self, merged: Values, rates: Values, processes: list[dict]) -> dict:
        from dataclasses import asdict
        return {"stage": STAGE, "now": time.time(), "started": self.started,
                "names": [asdict(s) for s in self.manager.states.values()]}

    def answer(self, method: str, path: str) -> Page:
        if path == "/metrics":
            merged, _, _ = self.gather()
            return 200, METRICS_CONTENT_TYPE, render_prometheus(self.prefix, self.all_families(), merged)
        if path in ("/stats", "/stats.json"):
            # No HTML page: the names' states as JSON (`frontgate certs` shows them as text).
            data = self._page_data({}, {}, [])
            return 200, "application/json", (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
        return 404, "text/plain; charset=utf-8", b"not found: /metrics, /stats, /stats.json\n"

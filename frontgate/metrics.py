"""What both stages' admin listeners share: metric families, per-process snapshots and their merge,
and the Prometheus rendering (the admin listener that serves them: frontgate.admin_http).

Counting on the hot path is the stages' own business (plain ints and dicts, mux_router.stats and
tls_terminator.stats); prometheus-client is touched only when /metrics is scraped, through a
Collector over the merged values on a fresh registry.

Workers: each process of a stage writes a JSON snapshot of its values every second to
`<stats_dir>/<stage>-<pid>.json` (temp file + os.replace, so a reader sees a whole file). Whichever
process answers a scrape merges the snapshots of the other live processes of the same listener with
its own live values, so every answer shows the whole stage.

Values: `{family name: {label values tuple: number}}`. In a snapshot the tuples become lists,
`[[*labels, value], ...]`, since JSON keys are strings.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("frontgate.metrics")

Values = dict[str, dict[tuple, float]]

SNAPSHOT_INTERVAL = 1.0      # seconds between two snapshots of a process
SNAPSHOT_FRESH = 5.0         # an older snapshot belongs to a process that stopped writing: ignored
RATE_WINDOW = 10             # rates are over the last this many snapshot intervals
MAX_SNAPSHOT_FILES = 256     # bound on files read per scrape (workers are at most 64)
MAX_SNAPSHOT_SIZE = 4 * 1024 * 1024
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    name: str                     # without the stage prefix; counters end in _total
    kind: str                     # "counter" | "gauge"
    help: str
    labels: tuple[str, ...] = ()
    # "sum": added up over the processes; "own": what the answering process sees (health states,
    # certificates: the same in every process, summing them would be nonsense).
    merge: str = "sum"


# --------------------------------------------------------------------------- snapshots (pure parts)

def encode_values(values: Values) -> dict[str, list]:
    return {name: [[*labels, value] for labels, value in rows.items()] for name, rows in values.items()}


def decode_values(doc: Any) -> Values:
    """The inverse of encode_values; rows that do not have the right shape are dropped."""
    out: Values = {}
    if not isinstance(doc, dict):
        return out
    for name, rows in doc.items():
        if not isinstance(rows, list):
            continue
        table: dict[tuple, float] = {}
        for row in rows:
            if (isinstance(row, list) and row and isinstance(row[-1], (int, float))
                    and not isinstance(row[-1], bool) and all(isinstance(x, str) for x in row[:-1])):
                table[tuple(row[:-1])] = row[-1]
        out[name] = table
    return out


def snapshot_doc(stage: str, admin_address: str, pid: int, started: float, now: float,
                 values: Values, rates: Values) -> dict:
    return {"format": 1, "stage": stage, "admin": admin_address, "pid": pid, "started": started,
            "written_at": now, "values": encode_values(values), "rates": encode_values(rates)}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True          # someone else's process: alive
    except OSError:
        return False
    return True


def read_snapshots(directory: Path, stage: str, admin_address: str, own_pid: int, now: float,
                   alive: Callable[[int], bool] = pid_alive) -> list[dict]:
    """The snapshots of the other live processes of the same stage and admin listener: file named
    `<stage>-<pid>.json`, written less than SNAPSHOT_FRESH ago, by a pid that is still alive."""
    out = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    pattern = re.compile(re.escape(stage) + r"-([0-9]+)\.json")
    for name in names[:MAX_SNAPSHOT_FILES * 4]:
        m = pattern.fullmatch(name)
        if not m or int(m.group(1)) == own_pid:
            continue
        pid = int(m.group(1))
        try:
            with open(directory / name, "rb") as f:
                doc = json.loads(f.read(MAX_SNAPSHOT_SIZE))
        except (OSError, ValueError):
            continue
        if (not isinstance(doc, dict) or doc.get("stage") != stage or doc.get("admin") != admin_address
                or doc.get("pid") != pid or not isinstance(doc.get("written_at"), (int, float))):
            continue
        if not 0 <= now - doc["written_at"] < SNAPSHOT_FRESH or not alive(pid):
            continue
        out.append({"pid": pid, "started": float(doc.get("started") or 0.0), "written_at": doc["written_at"],
                    "values": decode_values(doc.get("values")), "rates": decode_values(doc.get("rates"))})
        if len(out) >= MAX_SNAPSHOT_FILES:
            break
    return out


def merge(families: Iterable[Family], own: Values, others: Iterable[Values]) -> Values:
    """Sums over the processes for "sum" families; the own process's values for "own" ones."""
    others = list(others)
    out: Values = {}
    for fam in families:
        rows = dict(own.get(fam.name, {}))
        if fam.merge == "sum":
            for values in others:
                for labels, value in values.get(fam.name, {}).items():
                    if len(labels) == len(fam.labels):
                        rows[labels] = rows.get(labels, 0) + value
        out[fam.name] = rows
    return out


def merge_rates(own: Values, others: Iterable[Values]) -> Values:
    out: Values = {name: dict(rows) for name, rows in own.items()}
    for values in others:
        for name, rows in values.items():
            table = out.setdefault(name, {})
            for labels, value in rows.items():
                table[labels] = table.get(labels, 0) + value
    return out


class RateMeter:
    """Rates of counters from their values at the last RATE_WINDOW + 1 samples (one per snapshot)."""

    def __init__(self, window: int = RATE_WINDOW):
        self.samples: collections.deque[tuple[float, Values]] = collections.deque(maxlen=window + 1)

    def sample(self, now: float, counters: Values) -> None:
        self.samples.append((now, {name: dict(rows) for name, rows in counters.items()}))

    def rates(self) -> Values:
        if len(self.samples) < 2:
            return {}
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        span = t1 - t0
        if span <= 0:
            return {}
        out: Values = {}
        for name, rows in last.items():
            before = first.get(name, {})
            out[name] = {labels: max(0.0, (value - before.get(labels, 0)) / span) for labels, value in rows.items()}
        return out


def process_rows(own_pid: int, own_started: float, own_values: Values, others: list[dict],
                 connections_family: str, requests_family: str) -> list[dict]:
    """One row per process, for the page's "processes" table and the pid-labelled families."""
    rows = []
    for pid, started, values in [(own_pid, own_started, own_values)] + [
            (s["pid"], s["started"], s["values"]) for s in others]:
        rows.append({"pid": pid, "started": started,
                     "connections": sum(values.get(connections_family, {}).values()),
                     "requests": sum(values.get(requests_family, {}).values())})
    rows.sort(key=lambda r: r["pid"])
    return rows


# --------------------------------------------------------------------------- Prometheus

def render_prometheus(prefix: str, families: Iterable[Family], values: Values) -> bytes:
    """The text exposition of `values`, through prometheus-client on a registry of its own (the
    process-wide default registry is never used: it would collect on import, for every request)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _Collector(Collector):
        def collect(self):
            for fam in families:
                cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
                name = prefix + (fam.name.removesuffix("_total") if fam.kind == "counter" else fam.name)
                metric = cls(name, fam.help, labels=list(fam.labels))
                for labels, value in sorted(values.get(fam.name, {}).items()):
                    metric.add_metric(list(labels), value)
                yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)

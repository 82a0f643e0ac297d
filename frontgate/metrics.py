"""What both stages' admin listeners share: metric families, per-process snapshots and their merge,
the Prometheus rendering, and a tiny HTTP server for /metrics, /stats and /stats.json.

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

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from frontgate.config import AdminConfig

log = logging.getLogger("frontgate.metrics")

Values = dict[str, dict[tuple, float]]

SNAPSHOT_INTERVAL = 1.0      # seconds between two snapshots of a process
SNAPSHOT_FRESH = 5.0         # an older snapshot belongs to a process that stopped writing: ignored
RATE_WINDOW = 10             # rates are over the last this many snapshot intervals
MAX_HEAD = 8 * 1024          # admin request head bound
READ_TIMEOUT = 5.0           # the whole admin request head must arrive within this
WRITE_TIMEOUT = 5.0
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


# --------------------------------------------------------------------------- the admin HTTP server

class AdminRequestError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) (/[\x21-\x7e]*) HTTP/1\.[01]")


def parse_admin_request(data: bytes) -> tuple[str, str] | None:
    """(method, path without the query) of a request head; None while the head is incomplete;
    AdminRequestError for a head too large (431), malformed (400) or a method other than GET and
    HEAD (405). Only the request line matters: the fields are read past, never interpreted."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise AdminRequestError(431, "request head too large")
        line_end = data.find(b"\r\n")
        if line_end >= 0 and not _REQUEST_LINE.fullmatch(data[:line_end]):
            raise AdminRequestError(400, "malformed request line")
        return None
    if end + 4 > MAX_HEAD:
        raise AdminRequestError(431, "request head too large")
    line = data[:data.find(b"\r\n")]
    m = _REQUEST_LINE.fullmatch(line)
    if not m:
        raise AdminRequestError(400, "malformed request line")
    method, target = m.group(1).decode(), m.group(2).decode()
    if method not in ("GET", "HEAD"):
        raise AdminRequestError(405, f"{method} is not allowed; GET or HEAD")
    return method, target.partition("?")[0]


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def http_response(status: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{extra}Connection: close\r\n\r\n")
    return head.encode() + (b"" if head_only else body)


Page = tuple[int, str, bytes]      # status, content type, body


class AdminEndpoint:
    """One stage's admin side in one process: the snapshot task and the HTTP listener.

    The stage supplies `live()` (its own values now, counters and gauges), `page_data(merged,
    rates, processes)` (the dict /stats.json shows and /stats renders) and its families."""

    def __init__(self, stage: str, prefix: str, families: tuple[Family, ...], admin: AdminConfig | None,
                 live: Callable[[], Values], page_data: Callable[[Values, Values, list[dict]], dict],
                 connections_family: str, requests_family: str):
        self.stage, self.prefix, self.families = stage, prefix, families
        self.admin = admin
        self.live, self.page_data = live, page_data
        self.connections_family, self.requests_family = connections_family, requests_family
        self.pid = os.getpid()
        self.started = time.time()
        self.rates = RateMeter()
        self.server: asyncio.AbstractServer | None = None
        self.task: asyncio.Task | None = None
        self._write_problem: str | None = None
        self._prepared = False
        self._counters = tuple(f.name for f in families if f.kind == "counter")

    @property
    def snapshot_path(self) -> Path | None:
        if self.admin is None or self.admin.stats_dir is None:
            return None
        return self.admin.stats_dir / f"{self.stage}-{self.pid}.json"

    # ---- lifecycle

    async def start(self, sock=None) -> None:
        """Bind the admin address (SO_REUSEPORT: every worker of the stage binds it) unless `sock`
        is an already bound one, and start the snapshot task. Nothing without [admin]."""
        if self.admin is None:
            return
        address = self.admin.address
        if sock is not None:
            self.server = await asyncio.start_server(self._handle, sock=sock)
        else:
            self.server = await asyncio.start_server(self._handle, address.host, address.port, reuse_port=True)
        self.prepare()
        self.task = asyncio.create_task(self._publish_loop())
        log.info("admin listener on http://%s/ (/metrics, /stats, /stats.json)", address)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.server is not None:
            self.server.close()
            self.server = None
        path = self.snapshot_path
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def prepare(self) -> None:
        """Make the stats directory and remove the files left by killed processes of this stage (a
        clean exit removes its own). Once; the terminator calls it before dropping privileges."""
        if self._prepared or self.admin is None or self.admin.stats_dir is None:
            return
        self._prepared = True
        directory = self.admin.stats_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            names = os.listdir(directory)
        except OSError as e:
            log.warning("stats directory %s: %s; other workers' counters will be missing from this "
                        "process's answers", directory, e.strerror or e)
            return
        pattern = re.compile(re.escape(self.stage) + r"-([0-9]+)\.json")
        for name in names[:MAX_SNAPSHOT_FILES * 4]:
            m = pattern.fullmatch(name)
            if m and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(directory / name)

    async def _publish_loop(self) -> None:
        while True:
            try:
                self.publish()
            except Exception:        # a bug here must not take the daemon down; it is logged
                log.exception("writing the stats snapshot failed")
            await asyncio.sleep(SNAPSHOT_INTERVAL)

    def publish(self) -> None:
        now = time.time()
        values = self.live()
        self.rates.sample(time.monotonic(), {n: values.get(n, {}) for n in self._counters})
        path = self.snapshot_path
        if path is None:
            return
        doc = snapshot_doc(self.stage, str(self.admin.address), self.pid, self.started, now, values,
                           self.rates.rates())
        tmp = path.with_name(f".{path.name}.tmp")
        # No fsync: the snapshot is rewritten every second and worthless after a crash.
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as e:
            problem = e.strerror or str(e)
            if problem != self._write_problem:
                log.warning("cannot write the stats snapshot %s: %s", path, problem)
            self._write_problem = problem
            return
        self._write_problem = None

    # ---- answering

    def gather(self) -> tuple[Values, Values, list[dict]]:
        """(merged values, merged rates, process rows) of the whole stage, as of now."""
        own = self.live()
        others = []
        if self.admin is not None and self.admin.stats_dir is not None:
            others = read_snapshots(self.admin.stats_dir, self.stage, str(self.admin.address), self.pid, time.time())
        merged = merge(self.families, own, [s["values"] for s in others])
        rates = merge_rates(self.rates.rates(), [s["rates"] for s in others])
        processes = process_rows(self.pid, self.started, own, others, self.connections_family,
                                 self.requests_family)
        merged["process_start_time_seconds"] = {(str(p["pid"]),): p["started"] for p in processes}
        merged["process_active_connections"] = {(str(p["pid"]),): p["connections"] for p in processes}
        merged["process_requests_total"] = {(str(p["pid"]),): p["requests"] for p in processes}
        return merged, rates, processes

    def all_families(self) -> tuple[Family, ...]:
        return self.families + (
            Family("process_start_time_seconds", "gauge", "start time of each process of the stage (unix time)",
                   ("pid",)),
            Family("process_active_connections", "gauge", "open client connections per process", ("pid",)),
            Family("process_requests_total", "counter",
                   "requests (router) or connections (terminator) per process", ("pid",)),
        )

    def answer(self, method: str, path: str) -> Page:
        if path == "/metrics":
            merged, _, _ = self.gather()
            return 200, METRICS_CONTENT_TYPE, render_prometheus(self.prefix, self.all_families(), merged)
        if path in ("/stats", "/stats.json"):
            merged, rates, processes = self.gather()
            data = self.page_data(merged, rates, processes)
            data.setdefault("refresh", self.admin.refresh if self.admin else 5)
            if path == "/stats.json":
                return 200, "application/json", (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
            from frontgate.stats_page import render
            return 200, "text/html; charset=utf-8", render(data).encode()
        return 404, "text/plain; charset=utf-8", b"not found: /metrics, /stats, /stats.json\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = b""
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    while (request := parse_admin_request(data)) is None:
                        chunk = await reader.read(MAX_HEAD + 1)
                        if not chunk:
                            return
                        data += chunk
            except AdminRequestError as e:
                response = http_response(e.status, "text/plain; charset=utf-8", (e.reason + "\n").encode())
            except TimeoutError:
                response = http_response(408, "text/plain; charset=utf-8", b"request head timeout\n")
            else:
                method, path = request
                try:
                    status, ctype, body = self.answer(method, path)
                except Exception:
                    log.exception("admin request %s %s failed", method, path)
                    status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
                response = http_response(status, ctype, body, head_only=method == "HEAD")
            writer.write(response)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

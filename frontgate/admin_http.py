"""The admin listener both stages run: a tiny HTTP server for /metrics, /stats and /stats.json,
loopback only, answering from the merged values of every worker of the stage (frontgate.metrics)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

from frontgate.config import AdminConfig
from frontgate.metrics import (MAX_SNAPSHOT_FILES, METRICS_CONTENT_TYPE, SNAPSHOT_INTERVAL, Family, RateMeter, Values,
                              merge, merge_rates, pid_alive, process_rows, read_snapshots, render_prometheus,
                              snapshot_doc)

log = logging.getLogger("frontgate.admin")

MAX_HEAD = 8 * 1024          # admin request head bound
READ_TIMEOUT = 5.0           # the whole admin request head must arrive within this
WRITE_TIMEOUT = 5.0


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

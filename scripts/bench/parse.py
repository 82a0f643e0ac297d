"""Pure parsing of load-generator output (wrk, ab, h2load, openssl s_client) and the statistics we report.

No processes, no sockets: each function takes text or numbers, so tests/unit covers it. A parse
error is a `BenchParseError` carrying the tool's output, so a harness failure shows what the tool said.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass


class BenchParseError(ValueError):
    def __init__(self, tool: str, problem: str, output: str):
        self.tool, self.problem, self.output = tool, problem, output
        super().__init__(f"{tool}: {problem}\n--- output ---\n{output[-2000:]}")


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
# wrk prints sizes with binary prefixes but spells them KB/MB/GB.
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _duration_ms(text: str, tool: str, output: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise BenchParseError(tool, f"cannot read the duration {text!r}", output)
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    bytes_per_s: float
    latency_ms: dict[int, float]        # percentile (50, 75, 90, 99) -> milliseconds
    non_2xx_3xx: int
    socket_errors: dict[str, int]       # connect, read, write, timeout

    @property
    def errors(self) -> int:
        # `read` errors count connections the server closed, which is normal with
        # `Connection: close`; the caller decides whether they matter.
        return self.non_2xx_3xx + self.socket_errors.get("connect", 0) + self.socket_errors.get("timeout", 0)


def parse_wrk(output: str) -> WrkResult:
    """wrk 4.x with `--latency`."""
    tool = "wrk"
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", output, re.M)
    if not m:
        raise BenchParseError(tool, "no 'N requests in T' line", output)
    requests = int(m.group(1))
    seconds = _duration_ms(m.group(2), tool, output) / 1000.0
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    tps = re.search(r"^Transfer/sec:\s+([\d.]+)(\w+)", output, re.M)
    if not rps or not tps:
        raise BenchParseError(tool, "no Requests/sec or Transfer/sec line", output)
    if tps.group(2) not in _SIZE_UNITS:
        raise BenchParseError(tool, f"unknown size unit {tps.group(2)!r}", output)
    latency: dict[int, float] = {}
    for pm in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", output, re.M):
        latency[int(pm.group(1))] = _duration_ms(pm.group(2), tool, output)
    if requests and set(latency) != {50, 75, 90, 99}:
        raise BenchParseError(tool, "no complete 'Latency Distribution' (run wrk with --latency)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock: dict[str, int] = {}
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if se:
        sock = dict(zip(("connect", "read", "write", "timeout"), map(int, se.groups())))
    return WrkResult(requests=requests, seconds=seconds, requests_per_s=float(rps.group(1)),
                     bytes_per_s=float(tps.group(1)) * _SIZE_UNITS[tps.group(2)], latency_ms=latency,
                     non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0, socket_errors=sock)


@dataclass(frozen=True)
class AbResult:
    complete: int
    failed: int
    non_2xx: int
    seconds: float
    requests_per_s: float
    latency_ms: dict[int, float]        # percentile -> ms (ab's "served within" table)

    @property
    def errors(self) -> int:
        return self.failed + self.non_2xx


def parse_ab(output: str) -> AbResult:
    """ApacheBench 2.3."""
    tool = "ab"

    def number(label: str, cast=float):
        m = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", output, re.M)
        if not m:
            raise BenchParseError(tool, f"no {label!r} line", output)
        return cast(m.group(1))

    non2xx = re.search(r"^Non-2xx responses:\s+(\d+)", output, re.M)
    latency = {int(p): float(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\d+)", output, re.M)}
    return AbResult(complete=number("Complete requests", int), failed=number("Failed requests", int),
                    non_2xx=int(non2xx.group(1)) if non2xx else 0,
                    seconds=number("Time taken for tests"), requests_per_s=number("Requests per second"),
                    latency_ms=latency)


@dataclass(frozen=True)
class H2loadResult:
    protocol: str                       # "Application protocol:" (h2 when ALPN chose it)
    requests: int                       # done
    succeeded: int
    failed: int
    errored: int
    timeout: int
    requests_per_s: float
    status: dict[str, int]              # "2xx" .. "5xx" -> responses
    request_ms: dict[str, float]        # "time for request": min, max, mean, sd

    @property
    def errors(self) -> int:
        return self.failed + self.errored + self.timeout + sum(n for k, n in self.status.items() if k != "2xx")


def parse_h2load(output: str) -> H2loadResult:
    """h2load (nghttp2 1.x) summary lines."""
    tool = "h2load"
    fin = re.search(r"^finished in ([\d.]+\w+), ([\d.]+) req/s", output, re.M)
    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", output, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    if not fin or not req or not codes:
        raise BenchParseError(tool, "no 'finished in', 'requests:' or 'status codes:' line", output)
    proto = re.search(r"^Application protocol: (\S+)", output, re.M)
    times: dict[str, float] = {}
    tm = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    if tm:
        times = {k: _duration_ms(v, tool, output) for k, v in zip(("min", "max", "mean", "sd"), tm.groups())}
    _, _, done, ok, failed, errored, timeout = map(int, req.groups())
    return H2loadResult(protocol=proto.group(1) if proto else "?", requests=done, succeeded=ok, failed=failed,
                        errored=errored, timeout=timeout, requests_per_s=float(fin.group(2)),
                        status=dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, codes.groups()))), request_ms=times)


def parse_s_client_session(output: str) -> tuple[str, bool]:
    """(protocol, reused) from `openssl s_client -brief`-less output: 'New, TLSv1.3, Cipher is X'
    or 'Reused, TLSv1.3, Cipher is X'. The cipher is part of the protocol string we return."""
    m = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", output, re.M)
    if not m:
        raise BenchParseError("openssl s_client", "no 'New/Reused, PROTOCOL, Cipher is' line", output)
    return f"{m.group(2)} {m.group(3)}", m.group(1) == "Reused"


# --------------------------------------------------------------------------- statistics

def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (the definition wrk and ab use)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int


def summarize(samples: list[float]) -> Summary | None:
    values = [v for v in samples if v is not None and not math.isnan(v)]
    if not values:
        return None
    return Summary(median=statistics.median(values), low=min(values), high=max(values), n=len(values))


def ratio(ours: Summary | None, theirs: Summary | None) -> float | None:
    if ours is None or theirs is None or theirs.median == 0:
        return None
    return ours.median / theirs.median


def cpu_us_per_request(before_s: float, after_s: float, requests: int) -> float:
    """CPU microseconds per request of a stage over a measured window (NaN without requests)."""
    if requests <= 0:
        return math.nan
    return (after_s - before_s) * 1e6 / requests


# The request line httplog quotes at the end of an entry (an optional " (note)" follows).
_LOGGED_TARGET = re.compile(r'"[A-Z]+ (\S+) HTTP/\d(?:\.\d)?"(?: \(.*\))?$', re.M)
# An entry's `backend/server` (the app's name, and the server), after `client [date] frontend`.
_LOGGED_APP_AND_TARGET = re.compile(r'^\S+ \[[^\]]*\] \S+ ([^/\s]+)/\S+ .*"[A-Z]+ (\S+) HTTP/\d(?:\.\d)?"(?: \(.*\))?$', re.M)
_THREAD_ID = re.compile(r"[?&]t=(\d+)(?:&|$)")


def logged_variety(access_log: str) -> tuple[int, int, set[str]]:
    """Of the httplog lines whose target names a wrk thread (`t=`: the varied requests; the lines
    of the run before may come late): (distinct targets, lines, thread ids)."""
    varied = [(t, m.group(1)) for t in _LOGGED_TARGET.findall(access_log) if (m := _THREAD_ID.search(t))]
    return len({t for t, _ in varied}), len(varied), {thread for _, thread in varied}


def logged_apps(access_log: str) -> set[str]:
    """The apps (httplog's backend) of the lines whose target names a wrk thread, as logged_variety
    counts them. An app name with a '/' (a dynamic route's path prefix) is cut there."""
    return {app for app, target in _LOGGED_APP_AND_TARGET.findall(access_log) if _THREAD_ID.search(target)}

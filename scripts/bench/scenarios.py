"""The scenarios of the benchmark: which systems each compares, what it measures, how.

A scenario's `measure(run, system)` starts the system fresh, drives load with an external client
(wrk, ab, or our WebSocket client), and returns {metric key: value}. Smoke mode shrinks every
duration and count so the whole harness runs in seconds; its numbers mean nothing.

The request-rate scenarios (1, 2, 4, 8) measure every system with every request different (its own
query string and cookie) as their headline, with the CPU each stage spends per request over that
run; the same request again and again (wrk without a script) stays as a noted second metric.
"""
from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from scripts.bench import configs
from scripts.bench.harness import (DIRECT, FLOOR, FLOOR_PARSERS, FRONTGATE, FRONTGATE_NOLOG, HAPROXY, HAPROXY_TLS,
                                   REF_SEED, REF_TUNED, ROUTER, ROUTER_NOLOG, ROUTER_ROUTES, ROUTER_STATIC, Endpoint, Run,
                                   System)
from scripts.bench.parse import (AbResult, H2loadResult, WrkResult, cpu_us_per_request, logged_apps, logged_variety,
                                 parse_ab, parse_h2load, parse_s_client_session, parse_wrk)
from scripts.bench.procs import cpu_seconds, run_tool

TLS_SYSTEMS = (FRONTGATE, FRONTGATE_NOLOG, REF_TUNED, REF_SEED)
SLEEPY_CAPACITY = 3 * 4 / 0.050          # 3 backends x 4 workers / 50 ms = 240 requests/s


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"
    headline: bool = False            # shown in the summary table and the chart
    noted: bool = False               # its ratios against the references in the scenario's notes
    target: str = ""                  # what frontgate / reference should be (issue 20), for the summary
    target_ratio: float | None = None  # ... as a number to check, when it is one


@dataclass(frozen=True)
class Scenario:
    id: int
    title: str
    systems: tuple[System, ...]
    metrics: tuple[Metric, ...]
    measure: Callable[[Run, System], dict[str, float]]
    notes: str = ""

    @property
    def first_metric(self) -> Metric:
        """The metric a scenario's ratios are given in: its first headline one."""
        return next((m for m in self.metrics if m.headline), self.metrics[0])


class MeasurementError(RuntimeError):
    pass


# --------------------------------------------------------------------------- clients

def _url(port: int, path: str, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"


# Every request different, as browsers' are: its own query string and its own cookie, unique
# across wrk's threads too. wrk runs one Lua state per thread; setup() runs in the main one and
# gives each thread its id (a global in that thread's state). wrk.format with a header table sends
# only those headers (and Host), so the command line's others (`Connection: close`) are copied in.
# A script that defines host_of(id, n) varies the Host as well (varied_hosts).
VARIED_REQUESTS = """\
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

local n = 0
function request()
  n = n + 1
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Cookie"] = "session=" .. id .. "-" .. n
  if host_of then headers["Host"] = host_of(id, n) end
  return wrk.format(nil, wrk.path .. "?t=" .. id .. "&n=" .. n, headers)
end
"""
WRK_THREADS = 2


def varied_hosts(count: int, step: int) -> str:
    """VARIED_REQUESTS with the Host varied too, over `count` of scenario 8's route hosts spread
    over its table (configs.route_host(step), (2 * step), ...): request n of thread `id` goes to
    number 1 + (7n + 997 id) mod `count` (7 is prime to `count`: each thread goes through all of
    them before it comes back to one)."""
    if count % 7 == 0:
        raise ValueError("varied_hosts: 7 must not divide the count")
    lua_format = configs.ROUTE_HOST.replace("{:05d}", "%05d")
    return (f'function host_of(id, n)\n  return string.format("{lua_format}", '
            f"{step} * (1 + (7 * n + 997 * id) % {count}))\nend\n\n" + VARIED_REQUESTS)


def wrk(run: Run, port: int, path: str, tls: bool, connections: int, host: str = configs.HOST_STATIC,
        close: bool = False, varied: bool = False, script: str = VARIED_REQUESTS) -> WrkResult:
    """`varied`: every request different (`script`: VARIED_REQUESTS or a variant); else one request
    byte for byte."""
    s = run.settings
    duration = 1 if s.smoke else max(1, round(s.duration))
    argv = ["wrk", "-t", str(WRK_THREADS), "-c", str(connections), "-d", f"{duration}s", "--latency",
            "--timeout", "5s", "-H", f"Host: {host}"]
    if close:
        argv += ["-H", "Connection: close"]
    if varied:
        lua = run.workdir / "wrk-varied.lua"
        lua.write_text(script)
        argv += ["-s", str(lua)]
    result = parse_wrk(run_tool([*argv, _url(port, path, tls)], timeout=duration + 30))
    if result.requests == 0:
        raise MeasurementError(f"wrk completed no request against {_url(port, path, tls)}")
    if result.errors:
        raise MeasurementError(f"wrk saw errors: {result.non_2xx_3xx} non-2xx/3xx, socket {result.socket_errors}")
    return result


@dataclass(frozen=True)
class Rate:
    varied: WrkResult                 # every request different: the headline
    same: WrkResult                   # one request again and again: the note
    cpu_us: dict[str, float]          # "cpu_tls", "cpu_http": CPU µs per request of each stage, varied run


def rate(run: Run, sid: int, system: System, path: str, connections: int = 64, host: str = configs.HOST_STATIC,
         hosts: int = 1, script: str = VARIED_REQUESTS) -> Rate:
    """Both wrk runs on one fresh stack, the same request first (it also warms the pools), then
    every request different (`script`), over which each stage's CPU time is read. When the router
    writes its access log, the varied run's lines there must all differ (and come from every wrk
    thread), and name `hosts` apps when the script varies the Host over that many."""
    with run.stack(system) as ep:
        same = wrk(run, ep.port, path, tls=system.tls, connections=connections, host=host)
        log_from = _log_size(ep)
        before = {stage: cpu_seconds(pids) for stage, pids in ep.stages.items()}
        varied = wrk(run, ep.port, path, tls=system.tls, connections=connections, host=host, varied=True,
                     script=script)
        after = {stage: cpu_seconds(pids) for stage, pids in ep.stages.items()}
        if ep.access_log:
            _check_variety(run, sid, ep, log_from, hosts)
    return Rate(varied, same, {f"cpu_{stage}": cpu_us_per_request(before[stage], after[stage], varied.requests)
                               for stage in ep.stages})


def _log_size(ep: Endpoint) -> int:
    if ep.access_log is None:
        return 0
    time.sleep(0.2)                   # the routers write their log once per event-loop pass
    return ep.access_log.stat().st_size


def _check_variety(run: Run, sid: int, ep: Endpoint, offset: int, hosts: int = 1) -> None:
    """The proof that wrk sent what VARIED_REQUESTS says: the router logged each target once (and,
    when it varied the Host over `hosts` routes, the requests of each thread went to as many
    different apps as the thread sent requests, up to `hosts`)."""
    time.sleep(0.2)
    with open(ep.access_log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    distinct, logged, threads = logged_variety(text)
    run.count(sid, "every request different: distinct request targets among those the shipped router "
                   "logged (all rounds)", distinct, logged)
    if not logged or distinct != logged or len(threads) != WRK_THREADS:
        raise MeasurementError(f"the varied requests were not all different: {distinct} distinct of {logged} "
                               f"logged, from wrk threads {sorted(threads)}")
    if hosts > 1:
        apps = len(logged_apps(text))
        run.count(sid, f"Host varied over {hosts:,} routes: distinct apps the shipped router logged for the varied "
                       "requests, of the most there could be (all rounds)", apps, min(hosts, logged))
        if apps < min(hosts, logged // WRK_THREADS):
            raise MeasurementError(f"the Host did not vary: {apps} apps logged for {logged} requests")


def ab(run: Run, port: int, path: str, tls: bool, concurrency: int, requests: int | None = None,
       host: str = configs.HOST_STATIC) -> AbResult:
    """ab without -k: one new connection (and, over TLS, one full handshake) per request.
    Timed (`-t`) unless `requests` is given."""
    s = run.settings
    argv = ["ab", "-q", "-r", "-s", "10", "-c", str(concurrency), "-H", f"Host: {host}"]
    if requests is None:
        duration = 1 if s.smoke else max(1, round(s.duration))
        argv += ["-t", str(duration), "-n", "500000"]       # -n after -t: the count -t implies is 50000
        timeout = duration + 30
    else:
        argv += ["-n", str(requests)]
        timeout = 120 + requests / 10
    result = parse_ab(run_tool([*argv, _url(port, path, tls)], timeout=timeout))
    if result.complete == 0:
        raise MeasurementError(f"ab completed no request against {_url(port, path, tls)}")
    if result.errors:
        raise MeasurementError(f"ab saw {result.failed} failed and {result.non_2xx} non-2xx responses")
    return result


def session_reuse(port: int, attempts: int = 6) -> tuple[str, int, int]:
    """Does the server resume TLS sessions from its tickets? Pairs of `openssl s_client` connections,
    the second offering the session the first received. Several pairs, because workers that do not
    share ticket keys resume only when both connections land on the same process.
    Returns (protocol + cipher, resumed pairs, attempts)."""
    request = f"GET /1k.bin HTTP/1.1\r\nHost: {configs.HOST_STATIC}\r\nConnection: close\r\n\r\n"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", configs.HOST_STATIC, "-ign_eof"]
    proto, resumed = "?", 0
    with tempfile.TemporaryDirectory() as tmp:
        sess = f"{tmp}/session.pem"
        for _ in range(attempts):
            outputs = []
            for extra in (["-sess_out", sess], ["-sess_in", sess]):
                done = subprocess.run([*base, *extra], input=request, capture_output=True, text=True,
                                      errors="replace", timeout=15)
                outputs.append(done.stdout + done.stderr)
            proto, _ = parse_s_client_session(outputs[0])
            resumed += parse_s_client_session(outputs[1])[1]
    return proto, resumed, attempts


# --------------------------------------------------------------------------- scenarios

def _s1(run: Run, system: System) -> dict[str, float]:
    r = rate(run, 1, system, "/1k.bin")
    return {"rps": r.varied.requests_per_s, "p50": r.varied.latency_ms[50], "p99": r.varied.latency_ms[99],
            **r.cpu_us, "rps_same": r.same.requests_per_s}


def _s2(run: Run, system: System) -> dict[str, float]:
    r = rate(run, 2, system, "/64k.bin")
    return {"mibps": r.varied.requests_per_s * 64 / 1024, "p99": r.varied.latency_ms[99], **r.cpu_us,
            "mibps_same": r.same.requests_per_s * 64 / 1024}


def _s3(run: Run, system: System) -> dict[str, float]:
    out: dict[str, float] = {}
    for cert in ("ecdsa", "rsa"):
        with run.stack(system, cert=cert) as ep:
            proto, resumed, attempts = session_reuse(ep.port)
            run.count(3, f"{system.label}, {cert} ({proto}): new connections that offered the previous "
                         f"connection's session ticket and were resumed (openssl s_client, all rounds)",
                      resumed, attempts)
            out[f"full_{cert}"] = ab(run, ep.port, "/1k.bin", tls=True, concurrency=32).requests_per_s
            # wrk reconnects after each `Connection: close` response on the same SSL object, which
            # offers the session it last received: every connection after a thread's first tries to
            # resume. What the server accepts is its business (see the note above).
            out[f"resumed_{cert}"] = wrk(run, ep.port, "/1k.bin", tls=True, connections=32,
                                         close=True, varied=True).requests_per_s
    return out


def _s4(run: Run, system: System) -> dict[str, float]:
    r = rate(run, 4, system, "/1k.bin")
    return {"rps": r.varied.requests_per_s, "p50": r.varied.latency_ms[50], "p99": r.varied.latency_ms[99],
            **r.cpu_us, "rps_same": r.same.requests_per_s}


ROUTES_VARIED = 2000       # scenario 8's third metric: the Host varied over this many of the routes


def _s8(run: Run, system: System) -> dict[str, float]:
    """The router with its route table full against itself with the static apps only. The
    reference has no other host to ask for: its one run (Host: the static app's) stands for all
    three columns, so every ratio is over the same run without routes."""
    static = rate(run, 8, system, "/1k.bin")
    if not system.dynamic_routes:
        rps, cpu = static.varied.requests_per_s, static.cpu_us["cpu_http"]
        return {"rps_route": rps, "rps_static": rps, "route_cpu": cpu, "static_cpu": cpu,
                "rps_hosts": rps, "hosts_cpu": cpu}
    n = system.dynamic_routes
    last = rate(run, 8, system, "/1k.bin", host=configs.route_host(n))
    many = rate(run, 8, system, "/1k.bin", host=configs.route_host(n), hosts=ROUTES_VARIED,
                script=varied_hosts(ROUTES_VARIED, n // ROUTES_VARIED))
    run.note(8, f"the route table: {n:,} routes r00001…r{n:05d}.bench.localhost to nginx, written with frontgate's "
                "own code (frontgate.routes, route_store_file.write_table) before the routers start; Host of the "
                f"second column: {configs.route_host(n)}, the last added; the Host-varied run goes through "
                f"{ROUTES_VARIED:,} of them (every {n // ROUTES_VARIED}th), more than the router's 1,024-host "
                "memo of candidate apps holds, so each router keeps meeting hosts it forgot")
    return {"rps_route": last.varied.requests_per_s, "rps_static": static.varied.requests_per_s,
            "route_cpu": last.cpu_us["cpu_http"], "static_cpu": static.cpu_us["cpu_http"],
            "rps_hosts": many.varied.requests_per_s, "hosts_cpu": many.cpu_us["cpu_http"]}


H2LOAD_CONNECTIONS, H2LOAD_STREAMS = 4, 32
H2LOAD_URIS = 100_000      # more than one connection completes in a 10 s run: none comes round again


def h2load_uris(port: int, count: int, path: str = "/1k.bin") -> str:
    """Scenario 7's URI list, every URI with its own query (`t=1` marks them as varied for the
    access-log check, as a wrk thread id does)."""
    return "".join(f"https://{configs.HOST_STATIC}:{port}{path}?t=1&n={n}\n" for n in range(1, count + 1))


def h2load(run: Run, port: int, path: str) -> H2loadResult:
    """`h2load -c 4 -m 32 -i URIS -D T`: 4 connections of 32 concurrent streams each. h2load walks
    the URI list from its top on each connection, so a URI comes once per connection (4 times in
    all); its -H is the same for every request, so the cookie cannot vary."""
    s = run.settings
    duration = 1 if s.smoke else max(1, round(s.duration))
    uris = run.workdir / "h2load-uris.txt"
    uris.write_text(h2load_uris(port, 2000 if s.smoke else H2LOAD_URIS, path))
    argv = ["h2load", "-c", str(H2LOAD_CONNECTIONS), "-m", str(H2LOAD_STREAMS), "-D", str(duration),
            f"--connect-to=127.0.0.1:{port}", "-i", str(uris)]
    result = parse_h2load(run_tool(argv, timeout=duration + 60))
    if result.protocol != "h2":
        raise MeasurementError(f"h2load spoke {result.protocol}, not h2, to port {port}")
    if result.requests == 0:
        raise MeasurementError(f"h2load completed no request against port {port}")
    if result.errors:
        raise MeasurementError(f"h2load saw errors: {result.failed} failed, {result.errored} errored, "
                               f"{result.timeout} timed out, status codes {result.status}")
    return result


def _s7(run: Run, system: System) -> dict[str, float]:
    with run.stack(system) as ep:
        h2load(run, ep.port, "/1k.bin")           # warms the pools, as the same-request wrk run does
        log_from = _log_size(ep)
        before = {stage: cpu_seconds(pids) for stage, pids in ep.stages.items()}
        r = h2load(run, ep.port, "/1k.bin")
        after = {stage: cpu_seconds(pids) for stage, pids in ep.stages.items()}
        if ep.access_log:
            time.sleep(0.2)
            with open(ep.access_log, "rb") as f:
                f.seek(log_from)
                distinct, logged, _ = logged_variety(f.read().decode(errors="replace"))
            run.count(7, "distinct request targets among those the shipped router logged (all rounds; h2load sends "
                         f"each URI once per connection, {H2LOAD_CONNECTIONS} connections)", distinct, logged)
            if not logged or distinct * H2LOAD_CONNECTIONS < logged:
                raise MeasurementError(f"the h2load requests were not varied: {distinct} distinct of {logged} logged")
    cpu = {stage: cpu_us_per_request(before[stage], after[stage], r.requests) for stage in ep.stages}
    return {"rps": r.requests_per_s, "mean_ms": r.request_ms.get("mean", math.nan),
            "tls_cpu_us": cpu.get("tls", math.nan), "http_cpu_us": cpu.get("http", math.nan),
            "stack_cpu": sum(cpu.values())}


def _ws_client(run: Run, *args: str, timeout: float) -> dict:
    argv = [str(run.bin / "python"), "-m", "scripts.bench.wsload", *args]
    return json.loads(run_tool(argv, timeout=timeout, cwd=run.processes.cwd).strip().splitlines()[-1])


def _s5(run: Run, system: System) -> dict[str, float]:
    s = run.settings
    tunnels = 50 if s.smoke else s.ws_tunnels
    active = 10 if s.smoke else s.ws_active
    duration = 1 if s.smoke else s.duration
    # Two fresh stacks: the echo measurement must not pay for tearing down the idle tunnels.
    with run.stack(system) as ep:
        held = _ws_client(run, "idle", "--port", str(ep.port), "--count", str(tunnels),
                          "--pids", ",".join(map(str, ep.pids)), "--settle", "0.2" if s.smoke else "2",
                          timeout=120 + tunnels / 20)
        if held["failed"] or held["probe_ok"] != held["probed"]:
            raise MeasurementError(f"idle tunnels: {held['failed']} of {tunnels} failed to open "
                                   f"({', '.join(held['failure_kinds'])}), {held['probe_ok']}/{held['probed']} "
                                   f"probed tunnels echoed")
    with run.stack(system) as ep:
        echo = _ws_client(run, "echo", "--port", str(ep.port), "--tunnels", str(active),
                          "--duration", str(duration), timeout=duration + 120)
        if echo["errors"] or not echo["messages"]:
            raise MeasurementError(f"echo: {echo['errors']} tunnels failed, {echo['messages']} round trips")
    return {"rss_per_tunnel_kib": held["rss_per_tunnel"] / 1024, "rss_held_mib": held["rss_after"] / 2**20,
            "open_per_s": held["opened"] / held["open_seconds"], "echo_p50": echo["p50_ms"],
            "echo_p99": echo["p99_ms"], "echo_rate": echo["messages_per_s"]}


def _s6(run: Run, system: System) -> dict[str, float]:
    s = run.settings
    n, c = (40, 10) if s.smoke else (s.ab_requests, s.ab_concurrency)
    with run.stack(system) as ep:
        r = ab(run, ep.port, "/", tls=system.tls, concurrency=c, requests=n, host=configs.HOST_SLEEPY)
    return {"rps": r.requests_per_s, "share": 100 * r.requests_per_s / SLEEPY_CAPACITY,
            "p50": r.latency_ms.get(50, math.nan), "p99": r.latency_ms.get(99, math.nan)}


_MS = "{:,.2f}"
_US = "{:,.1f}"
NO_WORSE = "no worse than before"
CPU_TLS = Metric("cpu_tls", "CPU µs/request, TLS stage (terminator or stunnel)", False, _US)
CPU_HTTP = Metric("cpu_http", "CPU µs/request, HTTP stage (router or HAProxy)", False, _US)
SCENARIOS: dict[int, Scenario] = {s.id: s for s in (
    Scenario(1, "HTTPS keep-alive, 1 KiB responses, 64 connections, every request different (wrk)", TLS_SYSTEMS, (
        Metric("rps", "requests/s", True, headline=True, target="≥ 1.0", target_ratio=1.0),
        Metric("p50", "p50 ms", False, _MS),
        Metric("p99", "p99 ms", False, _MS, headline=True),
        CPU_TLS, CPU_HTTP,
        Metric("rps_same", "requests/s, the same request again and again", True, noted=True)), _s1),
    Scenario(2, "HTTPS keep-alive, 64 KiB responses, 64 connections, every request different (wrk)", TLS_SYSTEMS, (
        Metric("mibps", "MiB/s (body)", True, "{:,.1f}", headline=True, target="≥ 1.1", target_ratio=1.1),
        Metric("p99", "p99 ms", False, _MS),
        CPU_TLS, CPU_HTTP,
        Metric("mibps_same", "MiB/s (body), the same request again and again", True, "{:,.1f}", noted=True)), _s2),
    Scenario(3, "A new TLS connection per request (1 KiB): full handshakes (ab, 32 concurrent), "
                "then resumed from session tickets (wrk with `Connection: close`, 32 connections, "
                "every request different)", TLS_SYSTEMS, (
        Metric("full_ecdsa", "full handshake, ECDSA P-256: conn/s", True, headline=True, target=NO_WORSE),
        Metric("full_rsa", "full handshake, RSA-2048: conn/s", True, headline=True, target=NO_WORSE),
        Metric("resumed_ecdsa", "with tickets, ECDSA P-256: conn/s", True, headline=True, target=NO_WORSE),
        Metric("resumed_rsa", "with tickets, RSA-2048: conn/s", True, headline=True, target=NO_WORSE)), _s3),
    Scenario(4, "Plain HTTP keep-alive through the router alone, 1 KiB, 64 connections, every request "
                "different (wrk)", (ROUTER, ROUTER_NOLOG, HAPROXY, FLOOR, FLOOR_PARSERS), (
        Metric("rps", "requests/s", True, headline=True, target="≥ 0.8", target_ratio=0.8),
        Metric("p50", "p50 ms", False, _MS),
        Metric("p99", "p99 ms", False, _MS),
        CPU_HTTP,
        Metric("rps_same", "requests/s, the same request again and again", True, noted=True)), _s4),
    Scenario(5, "WebSocket over TLS: idle tunnels held, then echo round trips on 100 active tunnels",
             (FRONTGATE, REF_TUNED, REF_SEED), (
        Metric("rss_per_tunnel_kib", "RSS per idle tunnel, KiB", False, "{:,.1f}", headline=True, target=NO_WORSE),
        Metric("rss_held_mib", "RSS with the tunnels held, MiB", False, "{:,.1f}"),
        Metric("open_per_s", "tunnels opened/s", True),
        Metric("echo_p50", "echo p50 ms", False, _MS),
        Metric("echo_p99", "echo p99 ms", False, _MS, headline=True),
        Metric("echo_rate", "echo round trips/s", True)), _s5),
    Scenario(6, "Seed 001: 3 backends sleeping 50 ms (4 workers each, 240 req/s in all); "
                "`ab -n1000 -c100`, a new connection per request",
             (FRONTGATE, REF_TUNED, REF_SEED, ROUTER, HAPROXY, DIRECT), (
        Metric("rps", "requests/s", True),
        Metric("share", "% of 240/s capacity", True, "{:,.1f}", headline=True, target=NO_WORSE),
        Metric("p50", "p50 ms", False),
        Metric("p99", "p99 ms", False)), _s6),
    Scenario(7, f"HTTPS HTTP/2, 1 KiB responses, {H2LOAD_CONNECTIONS} connections x {H2LOAD_STREAMS} concurrent "
                "streams, every request different (h2load); the reference is HAProxy terminating TLS itself",
             (FRONTGATE, FRONTGATE_NOLOG, HAPROXY_TLS), (
        Metric("rps", "requests/s", True, headline=True),
        Metric("mean_ms", "mean ms per request", False, _MS),
        Metric("stack_cpu", "CPU µs/request, all stages", False, _US, headline=True),
        Metric("tls_cpu_us", "CPU µs/request, TLS stage (terminator; HAProxy: in the line above)", False, _US),
        Metric("http_cpu_us", "CPU µs/request, HTTP stage (router)", False, _US)), _s7),
    Scenario(8, "Plain HTTP keep-alive through the router alone (as shipped) with 10,000 dynamic routes in its route "
                "table, against itself with its static apps only; 1 KiB, 64 connections, every request different "
                "(wrk)", (ROUTER_ROUTES, ROUTER_STATIC), (
        Metric("rps_route", "requests/s, Host: the last route added (static apps only: a static app's)", True,
               headline=True, target="≥ 0.95", target_ratio=0.95),
        Metric("rps_static", "requests/s, Host: a static app's", True, headline=True, target="≥ 0.95",
               target_ratio=0.95),
        Metric("route_cpu", "CPU µs/request, router, Host: the last route", False, _US),
        Metric("static_cpu", "CPU µs/request, router, Host: a static app's", False, _US),
        Metric("rps_hosts", f"requests/s, Host varied over {ROUTES_VARIED:,} routes (static apps only: a static "
                            "app's)", True, noted=True),
        Metric("hosts_cpu", f"CPU µs/request, router, Host varied over {ROUTES_VARIED:,} routes", False, _US)), _s8),
)}

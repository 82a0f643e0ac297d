"""The benchmark harness's pure parts: reading wrk/ab/openssl output, statistics, generated configs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from frontgate.config import load_router_config, load_terminator_config
from scripts.bench import configs
from scripts.bench.parse import (BenchParseError, cpu_us_per_request, logged_apps, logged_variety, parse_ab,
                                 parse_h2load, parse_s_client_session, parse_wrk, percentile, ratio, summarize)

FIXTURES = Path(__file__).parent / "bench_fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --------------------------------------------------------------------------- wrk

def test_wrk_numbers_and_latency_units():
    r = parse_wrk(fixture("wrk_ok.txt"))
    assert r.requests == 54235
    assert r.seconds == pytest.approx(1.10)
    assert r.requests_per_s == pytest.approx(49305.44)
    assert r.bytes_per_s == pytest.approx(60.09 * 2**20)
    assert r.latency_ms == {50: pytest.approx(0.156), 75: pytest.approx(0.161), 90: pytest.approx(0.172),
                            99: pytest.approx(0.230)}
    assert r.errors == 0


def test_wrk_counts_non_2xx_as_errors():
    r = parse_wrk(fixture("wrk_404.txt"))
    assert r.non_2xx_3xx == 58121
    assert r.errors == 58121
    assert r.latency_ms[99] == pytest.approx(1.26)


def test_wrk_socket_errors_read_is_not_an_error_but_timeout_is():
    text = fixture("wrk_ok.txt").replace(
        "Requests/sec", "  Socket errors: connect 0, read 12, write 0, timeout 3\nRequests/sec")
    r = parse_wrk(text)
    assert r.socket_errors == {"connect": 0, "read": 12, "write": 0, "timeout": 3}
    assert r.errors == 3


def test_wrk_seconds_and_minutes_in_latency():
    text = fixture("wrk_ok.txt").replace("99%  230.00us", "99%    1.50s").replace("50%  156.00us", "50%    2.00m")
    r = parse_wrk(text)
    assert r.latency_ms[99] == pytest.approx(1500)
    assert r.latency_ms[50] == pytest.approx(120_000)


def test_wrk_without_latency_flag_is_a_clear_error():
    text = "\n".join(l for l in fixture("wrk_ok.txt").splitlines() if "%" not in l or "Stdev" in l)
    with pytest.raises(BenchParseError, match="--latency"):
        parse_wrk(text)


def test_wrk_garbage_shows_the_output():
    with pytest.raises(BenchParseError, match="unable to connect"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


# --------------------------------------------------------------------------- ab

def test_ab_numbers():
    r = parse_ab(fixture("ab_ok.txt"))
    assert (r.complete, r.failed, r.non_2xx) == (200, 0, 0)
    assert r.requests_per_s == pytest.approx(9768.01)
    assert r.seconds == pytest.approx(0.020)
    assert r.latency_ms[50] == 0 and r.latency_ms[99] == 1 and r.latency_ms[100] == 1
    assert r.errors == 0


def test_ab_non_2xx():
    r = parse_ab(fixture("ab_404.txt"))
    assert r.non_2xx == 50 and r.errors == 50


def test_ab_missing_lines():
    with pytest.raises(BenchParseError, match="Complete requests"):
        parse_ab("apr_socket_connect(): Connection refused (111)\n")


# --------------------------------------------------------------------------- openssl s_client

@pytest.mark.parametrize("word, reused", [("New", False), ("Reused", True)])
def test_s_client_session_line(word, reused):
    out = f"CONNECTED(00000003)\n---\n{word}, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384\nServer public key is 256 bit\n"
    assert parse_s_client_session(out) == ("TLSv1.3 TLS_AES_256_GCM_SHA384", reused)


def test_s_client_without_handshake():
    with pytest.raises(BenchParseError):
        parse_s_client_session("connect:errno=111\n")


# --------------------------------------------------------------------------- statistics

def test_h2load_numbers():
    r = parse_h2load(fixture("h2load_ok.txt"))
    assert (r.protocol, r.requests, r.succeeded, r.errors) == ("h2", 80633, 80633, 0)
    assert r.requests_per_s == pytest.approx(16126.60)
    assert r.request_ms == {"min": pytest.approx(0.412), "max": pytest.approx(53.44), "mean": pytest.approx(7.89),
                            "sd": pytest.approx(3.12)}


def test_h2load_counts_failed_requests_and_non_2xx_as_errors():
    r = parse_h2load(fixture("h2load_5xx.txt"))
    assert (r.requests, r.failed, r.status["5xx"]) == (100, 100, 100)
    assert r.errors == 200


def test_h2load_without_its_summary_is_a_clear_error():
    with pytest.raises(BenchParseError, match="finished in"):
        parse_h2load("starting benchmark...\nNo protocol negotiated. Aborted.\n")


def test_percentile_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert math.isnan(percentile([], 50))


def test_summary_and_ratio():
    s = summarize([3.0, 1.0, 2.0, math.nan])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert summarize([]) is None and summarize([math.nan]) is None
    assert ratio(summarize([4.0]), summarize([2.0])) == 2.0
    assert ratio(summarize([4.0]), None) is None
    assert ratio(summarize([4.0]), summarize([0.0])) is None


# --------------------------------------------------------------------------- configs

BACKENDS = configs.Backends(nginx=18080, ws_echo=18081, sleepy=(18091, 18092, 18093))


def test_router_config_is_valid_and_routes_like_haproxy(tmp_path):
    path = tmp_path / "mux-router.toml"
    path.write_text(configs.router_toml(tmp_path, 18000, "127.0.0.1:18001", BACKENDS, workers=2))
    cfg = load_router_config(path)
    assert cfg.workers == 2
    assert {l.name: (l.address.port, l.proxy_protocol) for l in cfg.listeners} == {
        "public": (18000, False), "from_terminator": (18001, True)}
    routes = {a.hosts: tuple(s.address.port for s in a.servers) for a in cfg.apps}
    assert routes == {(configs.HOST_WS,): (18081,), (configs.HOST_SLEEPY,): (18091, 18092, 18093),
                      (configs.HOST_STATIC,): (18080,)}
    assert cfg.redirects == ()
    haproxy = configs.haproxy_cfg(17000, BACKENDS, nbthread=2)
    for host in (configs.HOST_STATIC, configs.HOST_WS, configs.HOST_SLEEPY):
        assert f"-i {host}" in haproxy
    for port in (18080, 18081, 18091, 18092, 18093):
        assert f"127.0.0.1:{port}" in haproxy
    assert "nbthread 2" in haproxy


def test_haproxy_terminating_tls_offers_h2_and_routes_the_same(tmp_path):
    pem = tmp_path / "ecdsa.pem"
    haproxy = configs.haproxy_cfg(17000, BACKENDS, nbthread=2, tls_pem=pem)
    assert f"bind 127.0.0.1:17000 ssl crt {pem} alpn h2,http/1.1 backlog 4096" in haproxy
    assert haproxy.replace(f" ssl crt {pem} alpn h2,http/1.1", "").replace(", TLS and h2 itself", "") == \
        configs.haproxy_cfg(17000, BACKENDS, nbthread=2)
    assert " ssl " not in configs.haproxy_cfg(17000, BACKENDS, nbthread=2)


def test_h2load_uri_list_every_uri_its_own_query_marked_varied():
    from scripts.bench.scenarios import h2load_uris
    uris = h2load_uris(17000, 50).splitlines()
    assert len(set(uris)) == 50 and uris[0] == f"https://{configs.HOST_STATIC}:17000/1k.bin?t=1&n=1"
    assert logged_variety("\n".join(_httplog(u.split(":17000", 1)[1]) for u in uris) + "\n")[:2] == (50, 50)


def test_router_config_for_one_listener_and_no_sleepy_backends(tmp_path):
    path = tmp_path / "mux-router.toml"
    backends = configs.Backends(nginx=18080, ws_echo=18081)
    path.write_text(configs.router_toml(tmp_path, 18000, None, backends, workers=1))
    cfg = load_router_config(path)
    assert [l.name for l in cfg.listeners] == ["public"]
    assert [a.name for a in cfg.apps] == ["ws", "static"]
    assert "use_backend sleepy" not in configs.haproxy_cfg(17000, backends, nbthread=1)


@pytest.mark.parametrize("log_file, access_log", [("access.log", "all"), (None, "off")])
def test_router_config_as_shipped_and_with_its_log_off(tmp_path, log_file, access_log):
    """As shipped: workers "auto" (one per usable CPU) and the httplog into a file; or the log off."""
    import os
    path = tmp_path / "mux-router.toml"
    log_path = tmp_path / log_file if log_file else None
    path.write_text(configs.router_toml(tmp_path, None, "unix:/run/fg/router.sock", BACKENDS,
                                        access_log_file=log_path))
    cfg = load_router_config(path)
    assert cfg.workers == len(os.sched_getaffinity(0))
    assert (cfg.access_log, cfg.access_log_format) == (access_log, "httplog")
    if log_path:
        assert cfg.access_log_file == log_path


@pytest.mark.parametrize("workers", [None, 2])
def test_terminator_config_is_valid(tmp_path, workers):
    import os
    pem = tmp_path / "bench.pem"
    pem.write_text("placeholder")
    path = tmp_path / "tls-terminator.toml"
    path.write_text(configs.terminator_toml(pem, 18443, "unix:/run/fg/router.sock", workers=workers))
    cfg = load_terminator_config(path)
    assert (cfg.listen.port, cfg.forward_to.path) == (18443, "/run/fg/router.sock")
    assert cfg.workers == (workers or len(os.sched_getaffinity(0)))
    assert cfg.certificates[0].cert == pem


def _stunnel_sections(text: str) -> tuple[list[str], list[str]]:
    """(global lines, [https] lines), comments left out."""
    lines = [l for l in text.splitlines() if l and not l.startswith(";")]
    at = lines.index("[https]")
    return lines[:at], lines[at + 1:]


def test_stunnel_seed_config_and_the_tuned_one(tmp_path):
    seed = configs.stunnel_conf(tmp_path, "s", tmp_path / "c.pem", 1, 2, tuned=False)
    tuned = configs.stunnel_conf(tmp_path, "s", tmp_path / "c.pem", 1, 2, tuned=True)
    seed_global, seed_service = _stunnel_sections(seed)
    tuned_global, tuned_service = _stunnel_sections(tuned)
    for line in ("fips = no", f"cert = {tmp_path / 'c.pem'}"):
        assert line in seed_global
    assert seed_service == ["accept = 127.0.0.1:1", "connect = 127.0.0.1:2"]
    assert not any(k in seed for k in ("TIMEOUTclose", "socket", "debug"))
    # stunnel(8): debug is a global option; socket and TIMEOUTclose belong to the service.
    assert tuned_global == seed_global + ["debug = warning"]
    assert tuned_service == seed_service + ["TIMEOUTclose = 0", "socket = l:TCP_NODELAY=1",
                                            "socket = r:TCP_NODELAY=1"]


# --------------------------------------------------------------------------- scenario 8: dynamic routes

def test_the_router_follows_the_route_table_file_it_is_given(tmp_path):
    path = tmp_path / "mux-router.toml"
    path.write_text(configs.router_toml(tmp_path, 18000, None, BACKENDS, workers=1,
                                        routes_file=tmp_path / "8-routes.json"))
    assert load_router_config(path).routes.file == tmp_path / "8-routes.json"
    # Without one, the default beside the state file, which the benchmark never writes.
    path.write_text(configs.router_toml(tmp_path, 18000, None, BACKENDS, workers=1))
    cfg = load_router_config(path)
    assert cfg.routes.file == tmp_path / "routes.json" and [a.name for a in cfg.apps] == ["ws", "sleepy", "static"]


def test_the_route_table_is_frontgates_own_and_routes_every_host_to_nginx(tmp_path):
    """Written and read back with the route store's own functions, merged behind the static apps
    as the router merges it: each route host reaches nginx, the static hosts their apps."""
    from frontgate import routes
    from frontgate.route_store_file import read_table, write_table
    from mux_router.routing import select_app
    table = configs.route_table(300, 18080)
    write_table(tmp_path / "routes.json", table)
    again = read_table(tmp_path / "routes.json")
    assert again == table and (again.version, len(again)) == (300, 300)
    assert [configs.route_host(i) for i in (1, 300)] == ["r00001.bench.localhost", "r00300.bench.localhost"]
    last = again.routes[configs.route_host(300)]
    assert (last.servers, last.path, last.revision, last.owner) == (("127.0.0.1:18080",), "/", 300, "bench")
    toml = tmp_path / "mux-router.toml"
    toml.write_text(configs.router_toml(tmp_path, 18000, None, BACKENDS, workers=1))
    apps = routes.merged(load_router_config(toml), again).apps
    assert len(apps) == 3 + 300
    for i in (1, 150, 300):
        chosen = select_app(apps, configs.route_host(i), "/1k.bin")
        assert chosen.name == f"route:{configs.route_host(i)}" and chosen.servers[0].address.port == 18080
    assert select_app(apps, configs.HOST_STATIC, "/1k.bin").name == "static"
    assert select_app(apps, "r00301.bench.localhost", "/1k.bin") is None


def test_the_host_varying_script_goes_through_every_chosen_route_host():
    from scripts.bench.scenarios import VARIED_REQUESTS, varied_hosts
    # VARIED_REQUESTS sends the Host a script's host_of gives, and only then.
    assert 'if host_of then headers["Host"] = host_of(id, n) end' in VARIED_REQUESTS
    script = varied_hosts(2000, 5)
    assert script.endswith(VARIED_REQUESTS)
    assert script.startswith('function host_of(id, n)\n  return string.format("r%05d.bench.localhost", '
                             '5 * (1 + (7 * n + 997 * id) % 2000))\nend\n')
    # The same arithmetic: each thread's first 2,000 requests go to 2,000 different hosts, all routes.
    for thread in (1, 2):
        hosts = {configs.route_host(5 * (1 + (7 * n + 997 * thread) % 2000)) for n in range(1, 2001)}
        assert hosts == {configs.route_host(i) for i in range(5, 10_001, 5)}
    with pytest.raises(ValueError):
        varied_hosts(2100, 5)              # 7 divides it: a thread would cycle through a seventh


# --------------------------------------------------------------------------- every request different

def test_the_varied_requests_script_gives_each_thread_an_id_and_keeps_the_command_line_headers():
    from scripts.bench.scenarios import VARIED_REQUESTS
    assert 'thread:set("id", threads)' in VARIED_REQUESTS
    # wrk.format with a header table sends only those: wrk's own (-H Host) must be copied in.
    assert "for name, value in pairs(wrk.headers) do headers[name] = value end" in VARIED_REQUESTS
    assert 'headers["Cookie"] = "session=" .. id .. "-" .. n' in VARIED_REQUESTS
    assert 'wrk.format(nil, wrk.path .. "?t=" .. id .. "&n=" .. n, headers)' in VARIED_REQUESTS
    assert "local id" not in VARIED_REQUESTS        # a local would hide the id setup() gives the thread


def _httplog(target: str, note: str = "") -> str:
    line = (f'127.0.0.1:5 [06/Dec/2026:02:47:23.093] public static/127.0.0.1:1 0/0/0/0/1 200 1254 - - -- '
            f'1/1/0/0/0 0/0 "GET {target} HTTP/1.1"')
    return line + (f" ({note})" if note else "")


@pytest.mark.parametrize("targets, expected", [
    (["/1k.bin?t=1&n=1", "/1k.bin?t=2&n=1", "/1k.bin?t=1&n=2"], (3, 3, {"1", "2"})),
    (["/1k.bin?t=1&n=1", "/1k.bin?t=1&n=1"], (1, 2, {"1"})),                  # the same twice
    (["/1k.bin", "/1k.bin"], (0, 0, set())),                                   # plain wrk
    (["/1k.bin", "/1k.bin?t=1&n=1", "/1k.bin"], (1, 1, {"1"})),               # late lines of the run before
    (["/1k.bin?n=1&t=12"], (1, 1, {"12"})),
    ([], (0, 0, set())),
])
def test_logged_variety(targets, expected):
    assert logged_variety("\n".join(_httplog(t) for t in targets) + "\n") == expected


@pytest.mark.parametrize("lines, expected", [
    ([("static", "/1k.bin?t=1&n=1"), ("route:r00005.bench.localhost", "/1k.bin?t=2&n=1")],
     {"static", "route:r00005.bench.localhost"}),
    ([("route:a.localhost", "/1k.bin"), ("static", "/1k.bin?t=1&n=9")], {"static"}),     # the same-request run
    ([("route:a.localhost/api", "/api?t=1&n=1")], {"route:a.localhost"}),                   # cut at the path
    ([], set()),
])
def test_logged_apps(lines, expected):
    text = "\n".join(_httplog(target).replace(" static/", f" {app}/") for app, target in lines)
    assert logged_apps(text + "\n") == expected


def test_logged_variety_reads_http2_lines():
    line = _httplog("/1k.bin?t=1&n=7").replace("HTTP/1.1", "HTTP/2.0")
    assert logged_variety(line + "\n") == (1, 1, {"1"})


def test_logged_variety_reads_lines_with_a_note_and_skips_other_lines():
    text = "\n".join([_httplog("/a?t=1&n=1", note="retried"), "router started", _httplog("/a?t=2&n=1")])
    assert logged_variety(text) == (2, 2, {"1", "2"})


@pytest.mark.parametrize("before, after, requests, expected", [
    (1.0, 1.5, 10_000, 50.0),
    (0.0, 0.0, 10, 0.0),
    (2.0, 3.0, 0, None),
])
def test_cpu_us_per_request(before, after, requests, expected):
    got = cpu_us_per_request(before, after, requests)
    assert math.isnan(got) if expected is None else got == pytest.approx(expected)


# --------------------------------------------------------------------------- report and chart

def _results():
    from scripts.bench.report import Results
    r = Results()
    for fg, ref in ((3000.0, 1500.0), (3300.0, 1400.0), (2900.0, 1600.0)):
        r.add(1, "frontgate", {"rps": fg, "p50": 2.0, "p99": 10.0, "rps_same": 4000.0})
        r.add(1, "ref_tuned", {"rps": ref, "p50": 4.0, "p99": 40.0, "rps_same": 1600.0})
    r.add(1, "ref_seed", {"rps": 1000.0, "p50": 4.0, "p99": 20.0})
    r.fail(1, "ref_seed", 1, "wrk exited with 1:\nsome detail\nConnectionRefusedError")
    return r


def test_pairs_compare_haproxy_with_the_router_and_the_rest_with_the_pipeline():
    from scripts.bench.report import pairs
    from scripts.bench.scenarios import SCENARIOS
    assert [(a.key, b.key) for a, b in pairs(SCENARIOS[1])] == [
        ("frontgate", "ref_tuned"), ("frontgate_nolog", "ref_tuned"),
        ("frontgate", "ref_seed"), ("frontgate_nolog", "ref_seed")]
    assert [(a.key, b.key) for a, b in pairs(SCENARIOS[6])] == [
        ("frontgate", "ref_tuned"), ("frontgate", "ref_seed"), ("router", "haproxy"), ("frontgate", "direct")]
    assert [(a.key, b.key) for a, b in pairs(SCENARIOS[4])] == [
        ("router", "haproxy"), ("router_nolog", "haproxy"), ("router", "floor"), ("router_nolog", "floor"),
        ("router", "floor_parsers"), ("router_nolog", "floor_parsers")]


def test_the_rate_scenarios_run_every_frontgate_row_and_the_tuned_reference():
    from scripts.bench.scenarios import SCENARIOS
    for sid in (1, 2, 3):
        assert [s.key for s in SCENARIOS[sid].systems] == ["frontgate", "frontgate_nolog", "ref_tuned", "ref_seed"]
    assert [s.key for s in SCENARIOS[4].systems][:3] == ["router", "router_nolog", "haproxy"]
    for sid in (1, 2, 4):
        metrics = [m.key for m in SCENARIOS[sid].metrics]
        assert "cpu_http" in metrics and [m.key for m in SCENARIOS[sid].metrics if m.noted][0].endswith("_same")


def test_the_relay_floors_and_the_seed_stunnel_stay_out_of_the_summary():
    from scripts.bench.harness import Settings
    from scripts.bench.report import Results, comparisons, markdown
    from scripts.bench.scenarios import SCENARIOS
    r = Results()
    for system, rps, same in (("router", 700.0, 1000.0), ("router_nolog", 900.0, 1100.0), ("haproxy", 1000.0, 2000.0),
                              ("floor", 2400.0, 2300.0), ("floor_parsers", 1700.0, 1500.0)):
        r.add(4, system, {"rps": rps, "p50": 1.0, "p99": 2.0, "cpu_http": 30.0, "rps_same": same})
    assert [(c.ours.key, c.ref.key) for c in comparisons(r, [SCENARIOS[4]])] == [
        ("router", "haproxy"), ("router_nolog", "haproxy")]
    text = markdown(r, [SCENARIOS[4]], Settings(rounds=1), {}, {"cpus": "2"}, 60.0, None)
    summary = text.split("## Summary")[1].split("## 4.")[0]
    assert "floor" not in summary and "again and again" not in summary
    assert "| 0.70 | ≥ 0.8: **not met** |" in summary and "| 0.90 | ≥ 0.8: met |" in summary
    # router / floor, router (log off) / floor
    assert "| uvloop relay, no HTTP work (floor) | 2,400 | 1.00 | 2.00 | 30.0 | 2,300 | 0.29 | 0.38 |" in text
    # The noted metric: against the real reference only, in the notes.
    assert ("- mux-router alone as shipped (plain HTTP, access log on) / HAProxy alone (plain HTTP) "
            "(requests/s, the same request again and again): 0.50") in text
    assert text.count("again and again): ") == 2
    assert "- uvloop relay, no HTTP work (floor) / HAProxy alone (plain HTTP) (requests/s): 2.40" in text
    assert ("- CPU µs per request, all stages: mux-router alone, access log off (plain HTTP) 30.0, HAProxy alone "
            "(plain HTTP) 30.0 (frontgate / reference 1.00; lower is better)") in text
    assert text.count("CPU µs per request, all stages") == 2           # the floors are no rivals


def test_scenario_8_states_both_rates_over_the_router_without_routes_with_the_5_percent_target():
    from scripts.bench.harness import SYSTEMS, Settings
    from scripts.bench.report import Results, comparisons, markdown, pairs
    from scripts.bench.scenarios import SCENARIOS
    sc = SCENARIOS[8]
    assert [(a.key, b.key) for a, b in pairs(sc)] == [("router_routes", "router_static")]
    routed, static = SYSTEMS["router_routes"], SYSTEMS["router_static"]
    assert (routed.dynamic_routes, static.dynamic_routes) == (10_000, 0)
    assert routed.access_log and static.access_log and static.own_router and not routed.tls
    r = Results()
    r.add(8, "router_routes", {"rps_route": 960.0, "rps_static": 940.0, "route_cpu": 80.0, "static_cpu": 81.0,
                               "rps_hosts": 900.0, "hosts_cpu": 85.0})
    r.add(8, "router_static", {"rps_route": 1000.0, "rps_static": 1000.0, "route_cpu": 79.0, "static_cpu": 79.0,
                               "rps_hosts": 1000.0, "hosts_cpu": 79.0})
    assert [(c.metric.key, round(c.ratio, 2)) for c in comparisons(r, [sc])] == [("rps_route", 0.96),
                                                                                ("rps_static", 0.94)]
    text = markdown(r, [sc], Settings(rounds=1), {}, {"cpus": "2"}, 60.0, None)
    summary = text.split("## Summary")[1].split("## 8.")[0]
    assert "| 0.96 | ≥ 0.95: met |" in summary and "| 0.94 | ≥ 0.95: **not met** |" in summary
    assert "varied over 2,000 routes (static apps only: a static app's)): 0.90" in text    # the third, noted
    assert "| 80.0 | 81.0 | 900 | 85.0 |" in text                                       # CPU µs/request
    assert "all stages" not in text       # one stage: no sum of the columns


def test_cpu_of_the_whole_stack_sums_its_stages():
    from scripts.bench.harness import Settings
    from scripts.bench.report import Results, markdown
    from scripts.bench.scenarios import SCENARIOS
    r = Results()
    r.add(1, "frontgate_nolog", {"rps": 1.0, "cpu_tls": 40.0, "cpu_http": 50.0})
    r.add(1, "ref_tuned", {"rps": 1.0, "cpu_tls": 60.0, "cpu_http": 30.0})
    r.add(1, "frontgate", {"rps": 1.0, "cpu_tls": 40.0})            # a stage not measured: no sum
    text = markdown(r, [SCENARIOS[1]], Settings(rounds=1), {}, {"cpus": "2"}, 60.0, None)
    assert ("- CPU µs per request, all stages: frontgate, access log off (terminator + router) 90.0, "
            "stunnel (tuned) + HAProxy 90.0 (frontgate / reference 1.00; lower is better)") in text
    assert text.count("CPU µs per request, all stages") == 1


def test_markdown_medians_ratios_and_failures():
    from scripts.bench.harness import RUN_WIDE, Settings
    from scripts.bench.report import markdown
    from scripts.bench.scenarios import SCENARIOS
    text = markdown(_results(), [SCENARIOS[1]], Settings(rounds=3), {1: ["a note"], RUN_WIDE: ["a fact"]},
                    {"cpus": "2"}, 60.0, "results.png", warning="busy!")
    assert ("| 1 | requests/s (higher is better) | frontgate as shipped (terminator + router, access log on) | "
            "3,000 (2,900–3,300) | stunnel (tuned) + HAProxy | 1,500 (1,400–1,600) | 2.00 | ≥ 1.0: met |") in text
    assert "seed 004 config) + HAProxy |" not in text.split("## Summary")[1].split("## 1.")[0]
    assert "| stunnel (seed 004 config) + HAProxy | 1,000 [1 of 3 rounds] |" in text    # its table row
    assert "round 2: wrk exited with 1: … ConnectionRefusedError" in text
    assert "(requests/s, the same request again and again): 2.50" in text
    assert "- a note" in text and "- a fact" in text.split("## Summary")[0] and "busy!" in text and "![" in text
    assert 'workers = "auto"' in text


def test_chart_is_a_png_with_one_bar_per_comparison(tmp_path):
    import struct
    from scripts.bench.chart import render
    from scripts.bench.scenarios import SCENARIOS
    path = render(_results(), [SCENARIOS[1]], tmp_path / "r.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 600 and height == 80 + 30 * 4 + 60     # rps and p99, both frontgate rows, one reference
    # Nothing measured yet: every comparison still gets its row, marked "not measured".
    assert render(type(_results())(), [SCENARIOS[1]], tmp_path / "none.png") is not None


def test_results_survive_json_and_re_render(tmp_path, capsys):
    import json
    from dataclasses import asdict
    from scripts.bench.__main__ import main
    from scripts.bench.harness import Settings
    from scripts.bench.report import Results
    results = _results()
    again = Results.from_json(json.loads(json.dumps(results.to_json())))
    assert again.samples == results.samples and again.failures == results.failures
    record = {"settings": asdict(Settings(rounds=3)), "scenarios": [1], "systems": ["frontgate", "ref_tuned"],
              "notes": {"1": ["a note"]}, "machine": {"cpus": "2"}, "elapsed": 60.0, "load": [0.1, 0.2],
              "generated": "2026-01-01 00:00 UTC", "results": results.to_json()}
    (tmp_path / "results.json").write_text(json.dumps(record))
    assert main(["--from-json", str(tmp_path / "results.json")]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "on 2026-01-01 00:00 UTC" in text and "- a note" in text
    assert "stunnel (seed 004 config)" not in text          # only the systems that were run
    assert (tmp_path / "results.png").exists()
    # Writing the same run again keeps the diary at the end of results.md, and adds nothing to it.
    from scripts.bench.history import HEADING, MARKER
    diary = f"{MARKER}\n\n{HEADING}\n\n- an earlier run\n"
    (tmp_path / "results.md").write_text(text + "\n" + diary)
    assert main(["--from-json", str(tmp_path / "results.json")]) == 0
    again = (tmp_path / "results.md").read_text()
    assert again == text.rstrip() + "\n\n" + diary


def test_a_new_run_of_record_puts_the_one_it_replaces_into_the_history():
    from scripts.bench.history import HEADING, MARKER, with_history
    old_run = ("# results\n\nGenerated by `scripts/bench/run` on 2026-12-05 15:06 UTC in 22.5 min.\n\n"
               "## Machine\n\n| frontgate | e2cc945 |\n\n## Summary\n\n| a | table |\n\n## 1. Scenario\n\nrows\n")
    new_run = old_run.replace("2026-12-05 15:06", "2026-12-24 10:00").replace("e2cc945", "abc1234")
    entry = ("### Run of record of 2026-12-05 15:06 UTC, on e2cc945\n\n"
             "Generated by `scripts/bench/run` on 2026-12-05 15:06 UTC in 22.5 min.\n\n| a | table |")
    # The first time: the old run starts the history.
    first = with_history(new_run, old_run)
    assert first == f"{new_run.rstrip()}\n\n{MARKER}\n\n{HEADING}\n\n{entry}\n"
    # Then the next run: newest first, the older entries kept below.
    newer = new_run.replace("2026-12-24 10:00", "2026-12-25 10:00")
    second = with_history(newer, first)
    assert second.index("Run of record of 2026-12-24 10:00 UTC, on abc1234") < second.index(entry)
    assert second.count(MARKER) == 1 and second.count(HEADING) == 1 and second.count("## 1. Scenario") == 1
    assert with_history(new_run, None) == new_run
    assert with_history("Generated by x on a in b", "no summary here") == "Generated by x on a in b"


# --------------------------------------------------------------------------- the in-process measurement

def test_machine_measurement_drives_the_whole_exchange(capsys):
    """scripts.bench.machine runs varied requests through client.py, backends.py and the exchange,
    each to the backend and back (else it fails), and prints µs."""
    from scripts.bench import machine
    machine.main(["--requests", "200", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "µs CPU per request" in out
    assert machine.request(1) != machine.request(2)

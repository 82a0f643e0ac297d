"""Operations against the pipeline under the real supervisord (two router and two terminator
workers, ephemeral 127.0.0.1 ports): `frontgate status`, `reload`, rolling `restart`."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.supervised import Supervised, supervised_pipeline


@pytest.fixture(scope="module")
def fg(tmp_path_factory):
    yield from supervised_pipeline(tmp_path_factory.mktemp("ops"))


def test_status_shows_processes_health_and_certificates(fg: Supervised):
    facts = fg.status_json()
    procs = {(p["stage"], p["process"]): p for p in facts["processes"]}
    assert set(procs) >= {("tls-terminator", "tls-terminator_00"), ("tls-terminator", "tls-terminator_01"),
                          ("mux-router", "mux-router_00"), ("mux-router", "mux-router_01"),
                          ("health-checker", "health-checker")}
    router = procs[("mux-router", "mux-router_00")]
    assert router["state"] == "RUNNING" and router["pid"] > 0 and router["uptime_s"] >= 0
    assert router["rss_bytes"] > 1_000_000 and router["open_fds"] > 0 and router["listening"] == 2
    assert procs[("tls-terminator", "tls-terminator_01")]["listening"] == 1
    health = facts["health"]
    assert not health["stale"] and health["servers"][f"maps/127.0.0.1:{fg.maps_port}"]["state"] == "up"
    cert, = facts["certificates"]
    assert cert["default"] and "maps.localhost" in cert["names"] and cert["days_left"] > 300

    r = fg.frontgate("status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mux-router_01" in r.stdout and f"maps/127.0.0.1:{fg.maps_port}" in r.stdout and "UP" in r.stdout
    assert "DAYS LEFT" in r.stdout


def test_reload_with_an_invalid_config_changes_nothing(fg: Supervised):
    pids = {g: fg.pids(g) for g in ("mux-router", "tls-terminator", "health-checker")}
    router_toml = fg.configs / "mux-router.toml"
    good = router_toml.read_text()
    router_toml.write_text(good.replace('hosts = ["maps.localhost"', 'hosts = ["karten.localhost", "maps.localhost"'))
    (fg.configs / "health-checker.toml").write_text((fg.configs / "health-checker.toml").read_text() + "bogus = 1\n")
    try:
        offset = len(fg.log("mux-router"))
        r = fg.frontgate("reload")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "health-checker.toml: defaults.bogus: unknown key" in r.stderr
        assert "nothing reloaded" in r.stderr
        time.sleep(0.3)
        assert "reloaded" not in fg.log("mux-router")[offset:]
        assert fg.get("karten.localhost")[0] == 404          # the valid router change was not applied either
        assert {g: fg.pids(g) for g in pids} == pids
    finally:
        router_toml.write_text(good)
        (fg.configs / "health-checker.toml").write_text(
            (fg.configs / "health-checker.toml").read_text().replace("bogus = 1\n", ""))


def test_reload_signals_only_the_changed_stages_and_new_routes_apply_in_place(fg: Supervised):
    r = fg.frontgate("reload")
    assert r.returncode == 0 and "mux-router: unchanged" in r.stdout, r.stdout + r.stderr
    pids = {g: fg.pids(g) for g in ("mux-router", "tls-terminator", "health-checker")}
    fg.extra_hosts = ["karten.localhost"]
    (fg.configs / "mux-router.toml").write_text(fg.router_toml())
    r = fg.frontgate("reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tls-terminator: unchanged" in r.stdout
    assert "mux-router: config changed, reloaded (SIGHUP to 2 processes)" in r.stdout
    # The checker reads its server list from the router's file: it is reloaded too.
    assert "health-checker: config changed, reloaded (SIGHUP to 1 process)" in r.stdout
    # So does cert-manager (the apps marked acme = true); it confirms in its log as the others do.
    assert "cert-manager: config changed, reloaded (SIGHUP to 1 process)" in r.stdout
    assert fg.get("karten.localhost")[0] == 200
    assert {g: fg.pids(g) for g in pids} == pids          # in place: no process restarted
    r = fg.frontgate("reload")
    assert r.stdout.count("unchanged") == 4, r.stdout


def test_reload_reports_a_stage_that_refuses_the_new_config(fg: Supervised):
    # Valid for `frontgate check`, refused by the router: the new listener's port is taken.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    toml = fg.configs / "mux-router.toml"
    good = toml.read_text()
    toml.write_text(good.replace("[[app]]", f'[listen.extra]\naddress = "127.0.0.1:{port}"\n[[app]]', 1))
    try:
        r = fg.frontgate("reload")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "mux-router:mux-router_00: reload failed: keeping the running config: cannot listen on" in r.stderr
    finally:
        blocker.close()
        toml.write_text(good)
    # The routers kept running the old file, which is the one recorded as deployed: back to it, they
    # are unchanged. The checker took the new file (it does not listen): it is reloaded again.
    r = fg.frontgate("reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mux-router: unchanged" in r.stdout and "health-checker: config changed, reloaded" in r.stdout


def test_rolling_restart_keeps_the_ports_open(fg: Supervised):
    before = fg.pids("mux-router")
    refused: list[str] = []
    stop = threading.Event()

    def probe_ports():      # bounded: stops with the restart, at most 60 s
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", fg.public_port), timeout=1).close()
            except OSError as e:
                refused.append(f"{fg.public_port}: {e}")
            try:        # the terminator's way in: the unix socket supervisord holds for the workers
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(1)
                    s.connect(str(fg.router_socket))
            except OSError as e:
                refused.append(f"{fg.router_socket}: {e}")
            time.sleep(0.01)
    t = threading.Thread(target=probe_ports)
    t.start()
    try:
        r = fg.frontgate("restart", "mux-router")
    finally:
        stop.set()
        t.join()
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [l.split(":")[1] for l in lines] == ["mux-router_00", "mux-router_01"], r.stdout
    after = fg.pids("mux-router")
    assert all(a != b for a, b in zip(before, after)) and all(after)
    assert refused == []
    assert fg.get("maps.localhost")[0] == 200


def test_status_shows_the_config_each_process_runs_and_flags_one_not_yet_reloaded(fg: Supervised):
    def configs_of(stage: str) -> list[dict]:
        return [p["config"] for p in fg.status_json()["processes"] if p["stage"] == stage]

    for stage, n in (("mux-router", 2), ("tls-terminator", 2), ("health-checker", 1)):
        configs = configs_of(stage)
        assert len(configs) == n and all(c["current"] and c["fingerprint"] == c["on_disk"] for c in configs), configs
    toml = fg.configs / "mux-router.toml"
    good = toml.read_text()
    toml.write_text(good + "\n# edited, not reloaded yet\n")
    try:
        assert not any(c["current"] for c in configs_of("mux-router"))
        assert not any(c["current"] for c in configs_of("health-checker"))     # it reads the router's file
        assert all(c["current"] for c in configs_of("tls-terminator"))
        r = fg.frontgate("status")
        assert "(OLD)" in r.stdout and "mux-router_01: runs config" in r.stdout and "`make reload`" in r.stdout, r.stdout
        r = fg.frontgate("reload")
        assert r.returncode == 0, r.stdout + r.stderr
        assert all(c["current"] and c["last"]["event"] == "reload" for c in configs_of("mux-router"))
        assert "(OLD)" not in fg.frontgate("status").stdout
    finally:
        toml.write_text(good)
        assert fg.frontgate("reload").returncode == 0


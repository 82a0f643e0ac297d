"""frontgate.app_health: what `make deploy` waits for and prints (pure: no checker, no files)."""
from __future__ import annotations

import pytest

from frontgate.app_health import app_health, report, settled
from frontgate.config import load_router_config
from frontgate.health_state import HealthState, ServerState

ROUTER = """
[router]
[listen.public]
address = "127.0.0.1:8080"
[[app]]
name = "maps"
hosts = ["maps.localhost"]
servers = ["127.0.0.1:3000", "127.0.0.1:3001"]
[[app]]
name = "coltrane"
hosts = ["coltrane.localhost"]
servers = ["127.0.0.1:8000"]
"""

OK = {"ok": True, "took_ms": 1.0, "detail": "HTTP 200"}
REFUSED = {"ok": False, "took_ms": 0.1, "detail": "connection refused"}


def state(pid: int, **servers) -> HealthState:
    return HealthState(generation=1, written_at=0.0, checker_pid=pid,
                       servers={k.replace("_", "/127.0.0.1:"): ServerState(s, 0.0, c) for k, (s, c) in servers.items()})


@pytest.fixture
def router(tmp_path):
    (tmp_path / "mux-router.toml").write_text(ROUTER)
    return load_router_config(tmp_path / "mux-router.toml")


@pytest.mark.parametrize("health, pid, is_settled, failed", [
    (None, 7, False, ["maps", "coltrane"]),                                             # no file yet
    (state(6, maps_3000=("up", OK), maps_3001=("up", OK), coltrane_8000=("up", OK)), 7, False,
     ["maps", "coltrane"]),                                                             # an earlier checker's file
    (state(7, maps_3000=("up", OK)), 7, False, ["coltrane"]),                           # not every server checked
    (state(7, maps_3000=("up", OK), maps_3001=("up", OK), coltrane_8000=("up", OK)), 7, True, []),
    (state(7, maps_3000=("up", OK), maps_3001=("down", REFUSED), coltrane_8000=("up", OK)), 7, True, []),
    # fully-up: a first failed check leaves the server up, but it does not answer: not settled
    (state(7, maps_3000=("up", REFUSED), maps_3001=("up", OK), coltrane_8000=("up", REFUSED)), 7, False,
     ["coltrane"]),
    (state(7, maps_3000=("down", REFUSED), maps_3001=("down", REFUSED), coltrane_8000=("up", OK)), 7, True,
     ["maps"]),
])
def test_settled_and_failed_apps(router, health, pid, is_settled, failed):
    apps = app_health(router, health, pid)
    assert settled(apps) == is_settled
    lines, bad = report(apps)
    assert bad == failed and len(lines) == 2


def test_report_lines_say_plainly_what_answers(router):
    apps = app_health(router, state(7, maps_3000=("up", OK), maps_3001=("down", REFUSED),
                                    coltrane_8000=("up", REFUSED)), 7)
    lines, failed = report(apps)
    assert lines == [
        "maps: up (1 of 2 servers answer their checks; 127.0.0.1:3001 down (connection refused))",
        "coltrane: DOWN, no server answers, its requests fail: 127.0.0.1:8000 up, but its last check failed "
        "(connection refused): it goes down if it keeps failing"]
    assert failed == ["coltrane"]

"""The router's stats page in a real browser: headless Chromium loads /stats from a running
mux-router (with a health state saying one server is down), and the test reads what it rendered;
then scripts/stats_screenshot.py takes a PNG of it.

Needs Debian's `chromium` (`make test` installs it when missing)."""
from __future__ import annotations

import html
import importlib.util
import os
import re
import struct
import subprocess
import time

import pytest

from frontgate import health_state
from tests.helpers import BIN, REPO, free_port, start_daemon, stop_daemon
from tests.pipeline import RecordingBackend, check_no_tracebacks

_spec = importlib.util.spec_from_file_location("stats_screenshot", REPO / "scripts" / "stats_screenshot.py")
stats_screenshot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stats_screenshot)

pytestmark = pytest.mark.skipif(stats_screenshot.chromium() is None,
                                reason="chromium is not installed (make chromium, or apt-get install -y chromium)")


@pytest.fixture
def router(tmp_path):
    backend = RecordingBackend().start()
    dead_port, port, admin_port = free_port(), free_port(), free_port()
    (tmp_path / "state").mkdir()
    config = tmp_path / "mux-router.toml"
    config.write_text(f"""
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "state/health.json"
state_stale_after = 60
[listen.public]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin_port}"
refresh = 3
[[app]]
name = "maps"
hosts = ["maps.localhost"]
retries = 0
servers = ["127.0.0.1:{backend.port}", "127.0.0.1:{dead_port}"]
[[app]]
name = "coltrane"
hosts = ["coltrane.localhost"]
servers = ["127.0.0.1:{backend.port}"]
""")
    now = time.time()
    servers = {f"maps/127.0.0.1:{backend.port}": ("up", "HTTP 200"),
               f"maps/127.0.0.1:{dead_port}": ("down", "connect: Connection refused"),
               f"coltrane/127.0.0.1:{backend.port}": ("up", "HTTP 200")}
    health_state.write_atomic(tmp_path / "state" / "health.json", health_state.HealthState(
        generation=1, written_at=now, checker_pid=os.getpid(),
        servers={k: health_state.ServerState(state=s, since=now - 3600, last_check={"ok": s == "up", "took_ms": 1.0,
                                                                                    "detail": d})
                 for k, (s, d) in servers.items()}))
    proc = start_daemon(["mux-router", "--config", str(config)], wait_for=("127.0.0.1", admin_port))
    try:
        yield {"port": port, "admin_port": admin_port, "up": f"127.0.0.1:{backend.port}",
               "down": f"127.0.0.1:{dead_port}"}
    finally:
        output = stop_daemon(proc)
        backend.stop()
    check_no_tracebacks(output)


def _get(port: int, host: str) -> int:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _cells(row_html: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row_html, re.S)]


def test_chromium_renders_the_router_stats_page(router, tmp_path):
    for _ in range(4):
        assert _get(router["port"], "maps.localhost") == 200        # the down server gets none of them
    assert _get(router["port"], "coltrane.localhost") == 200
    assert _get(router["port"], "nobody.localhost") == 404
    url = f"http://127.0.0.1:{router['admin_port']}/stats"

    dom = stats_screenshot.dump_dom(url)
    assert "<title>mux-router stats</title>" in dom, dom[-2000:]
    assert re.search(r'<meta http-equiv="refresh" content="3">', dom)
    assert "app maps" in dom and "app coltrane" in dom
    rows = [(m.group(1), _cells(m.group(2))) for m in re.finditer(r'<tr class="(up|down)">(.*?)</tr>', dom, re.S)]
    # In page order: maps's two servers, then coltrane's one (the same backend as maps's first).
    assert [(cls, cells[0]) for cls, cells in rows] == [("up", router["up"]), ("down", router["down"]),
                                                        ("up", router["up"])]
    # maps: one server UP with the 4 requests, the other DOWN with the checker's reason.
    maps_up, down, coltrane = (cells for _, cells in rows)
    assert maps_up[1] == "UP" and maps_up[6] == "4" and maps_up[8] == "4"      # requests, 2xx
    assert coltrane[1] == "UP" and coltrane[6] == "1"
    assert down[1] == "DOWN" and "connect: Connection refused" in down[2] and down[2].startswith("for 1h00m")
    assert down[6] == "0"
    # The totals row and the requests no app took.
    totals = [_cells(m.group(1)) for m in re.finditer(r'<tr class="total">(.*?)</tr>', dom, re.S)]
    assert totals[0][1] == "1/2 up" and totals[0][6] == "4" and totals[0][8] == "4"     # requests, 2xx
    assert totals[1][1] == "1/1 up" and totals[1][6] == "1"
    assert "Requests no app took" in dom

    png = tmp_path / "stats.png"
    result = subprocess.run([str(BIN / "python"), str(REPO / "scripts" / "stats_screenshot.py"), str(png),
                             "--url", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 20_000, "a blank page compresses to almost nothing"


def test_stats_screenshot_says_when_no_deployment_runs(tmp_path):
    port = free_port()
    config = tmp_path / "mux-router.toml"
    config.write_text(f'[listen.public]\naddress = "127.0.0.1:{free_port()}"\n[admin]\naddress = "127.0.0.1:{port}"\n'
                      '[[app]]\nname = "a"\nhosts = ["a.localhost"]\nservers = ["127.0.0.1:1"]\n')
    result = subprocess.run([str(BIN / "python"), str(REPO / "scripts" / "stats_screenshot.py"),
                             str(tmp_path / "x.png"), "--config", str(config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert f"nothing answers at http://127.0.0.1:{port}/stats" in result.stderr
    assert "is the deployment running?" in result.stderr
    assert not (tmp_path / "x.png").exists()

"""`router.access_log_file`: access lines go to their own file, apart from the daemon's events;
SIGUSR1 reopens it (logrotate), a reload can move it, a reload naming a file that cannot be opened
is refused and the old file keeps getting the lines."""
from __future__ import annotations

import http.client
import json
import signal

import pytest

from tests.helpers import BIN, REPO, daemon_output, free_port, start_daemon, stop_daemon, wait_until

ROUTER = """
[router]
{log_file}
access_log_format = "{fmt}"
state_file = "state/health.json"
[listen.public]
address = "127.0.0.1:{public}"
[[app]]
name = "maps"
hosts = ["maps.localhost"]
servers = ["127.0.0.1:{app}"]
"""


@pytest.fixture
def app_port():
    port = free_port()
    proc = start_daemon([str(BIN / "python"), str(REPO / "scripts" / "demo_app.py"), "--name", "maps",
                         "--port", str(port)], wait_for=("127.0.0.1", port))
    yield port
    stop_daemon(proc)


class Router:
    def __init__(self, tmp_path, app_port: int):
        self.dir, self.app_port, self.public = tmp_path / "configs", app_port, free_port()
        self.dir.mkdir()
        (tmp_path / "logs").mkdir()
        self.config = self.dir / "mux-router.toml"
        self.proc = None

    def write(self, log_file: str | None, fmt: str = "httplog") -> None:
        line = "" if log_file is None else f'access_log_file = "{log_file}"'
        self.config.write_text(ROUTER.format(log_file=line, fmt=fmt, public=self.public, app=self.app_port))

    def start(self) -> None:
        self.proc = start_daemon(["mux-router", "--config", str(self.config)], wait_for=("127.0.0.1", self.public))

    def get(self, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.public, timeout=10)
        conn.request("GET", path, headers={"Host": "maps.localhost"})
        status = conn.getresponse().status
        conn.close()
        return status

    def reload(self) -> str:
        before = self.output().count("reload")
        self.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: self.output().count("reload") > before, what="the reload's outcome")
        return self.output()

    def output(self) -> str:
        return daemon_output(self.proc)


@pytest.fixture
def router(tmp_path, app_port):
    r = Router(tmp_path, app_port)
    yield r
    if r.proc is not None:
        assert "Traceback" not in stop_daemon(r.proc)


def logged(path, marker: str) -> bool:
    return path.exists() and marker in path.read_text()


def test_default_file_is_logs_access_log_of_the_deploy_and_events_stay_apart(router, tmp_path):
    router.write(None)                  # the default: ../logs/access.log from configs/
    router.start()
    access = tmp_path / "logs" / "access.log"
    assert router.get("/first") == 200
    wait_until(lambda: logged(access, '"GET /first HTTP/1.1"'), what="the line in logs/access.log")
    assert access.read_text().startswith("127.0.0.1:") and "/first" not in router.output()
    assert "listening on" in router.output() and "listening on" not in access.read_text()


def test_sigusr1_reopens_the_file_after_logrotate_moved_it(router, tmp_path):
    access = tmp_path / "logs" / "access.log"
    router.write("../logs/access.log")
    router.start()
    assert router.get("/before-rotation") == 200
    wait_until(lambda: logged(access, "/before-rotation"), what="the first line")
    rotated = access.rename(tmp_path / "logs" / "access.log.1")
    router.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: "access log" in router.output() and "reopened" in router.output(), what="the reopen")
    assert router.get("/after-rotation") == 200
    wait_until(lambda: logged(access, "/after-rotation"), what="the line in the new file")
    assert "/after-rotation" not in rotated.read_text() and "/before-rotation" not in access.read_text()


def test_a_reload_moves_the_log_and_a_file_that_cannot_be_opened_is_refused(router, tmp_path):
    first, second = tmp_path / "logs" / "access.log", tmp_path / "logs" / "other.log"
    router.write("../logs/access.log")
    router.start()
    router.write("../logs/other.log", fmt="json")       # access_log_format keeps working with the file
    assert "reloaded" in router.reload()
    assert router.get("/moved") == 200
    wait_until(lambda: logged(second, "/moved"), what="the line in the new file")
    entry = json.loads(second.read_text().splitlines()[-1])
    assert entry["request"] == "GET /moved HTTP/1.1" and entry["status"] == 200
    assert "/moved" not in first.read_text()

    router.write("../no-such-dir/access.log")
    out = router.reload()
    assert "reload failed, keeping the running config: cannot open the access log" in out, out
    assert router.get("/still-here") == 200
    wait_until(lambda: logged(second, "/still-here"), what="the line in the file still in use")


def test_dash_is_stdout(router, tmp_path):
    router.write("-")
    router.start()
    assert router.get("/to-stdout") == 200
    wait_until(lambda: '"GET /to-stdout HTTP/1.1"' in router.output(), what="the line on stdout")
    assert not (tmp_path / "logs" / "access.log").exists()

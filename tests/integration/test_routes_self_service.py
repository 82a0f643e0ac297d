"""Self-service routes: two real unprivileged users (created here, as root, with useradd) ask the
broker over its unix socket; the broker learns who asked from SO_PEERCRED. Each may add routes for
its own names and its own loopback ports, neither for the other's; every refusal names its rule."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import BIN, free_port, start_daemon, stop_daemon, wait_for_port, wait_until
from tests.routes_fixtures import NamedBackend, RouterNode, frontgate

BOUND = 5.0
SELF_SERVICE = """
[routes.self_service]
user_domains = ["{user}.apps.example.net", "*.{user}.apps.example.net"]
socket = "run/routes.sock"
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="creates users: needs root and useradd")


@pytest.fixture
def users():
    made = [f"fgt{who}{os.getpid() % 100000}" for who in ("alice", "bob")]
    for name in made:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    yield made
    for name in made:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def site(users):
    """A router with self-service, the broker (as root), and one HTTP server per user, run as that user."""
    directory = Path(tempfile.mkdtemp(prefix="fg-selfservice-"))
    os.chmod(directory, 0o755)           # the users read the config, as they would /etc/frontgate
    static = NamedBackend("static")
    node = RouterNode(directory, "127.0.0.1", static.address, extra=SELF_SERVICE).start()
    broker = start_daemon([str(BIN / "frontgate"), "route", "--configs", str(node.configs), "broker"])
    wait_until(lambda: (node.configs / "run" / "routes.sock").exists(), BOUND, what="broker socket")
    servers, ports = [], {}
    for user in users:
        port = free_port()
        servers.append(subprocess.Popen(["runuser", "-u", user, "--", "python3", "-m", "http.server", "--bind",
                                         "127.0.0.1", "--directory", "/usr", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True))
        wait_for_port("127.0.0.1", port, proc=servers[-1])
        ports[user] = port
    yield node, ports
    for proc in servers:
        os.killpg(proc.pid, signal.SIGKILL)      # runuser and the server it started
        proc.wait(10)
    stop_daemon(broker)
    node.stop()
    static.close()
    shutil.rmtree(directory, ignore_errors=True)


def as_user(node, user, *args):
    return frontgate(node.configs, "route", *args, user=user)


def test_each_user_adds_routes_for_its_own_names_and_ports(site, users):
    node, ports = site
    for user in users:
        for host in (f"{user}.apps.example.net", f"blog.{user}.apps.example.net"):
            r = as_user(node, user, "add", host, f"127.0.0.1:{ports[user]}")
            assert r.returncode == 0, r.stderr
            wait_until(lambda: node.get(host)[0] == 200, BOUND, what=f"{host} served")
    ls = frontgate(node.configs, "route", "ls").stdout
    assert f"owner={users[0]}" in ls and f"owner={users[1]}" in ls
    r = as_user(node, users[0], "rm", f"blog.{users[0]}.apps.example.net")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: node.get(f"blog.{users[0]}.apps.example.net")[0] == 404, BOUND)


def test_neither_user_may_use_the_others_names_or_ports(site, users):
    node, ports = site
    alice, bob = users
    assert as_user(node, bob, "add", f"{bob}.apps.example.net", f"127.0.0.1:{ports[bob]}").returncode == 0
    refusals = [
        (as_user(node, alice, "add", f"{bob}.apps.example.net", f"127.0.0.1:{ports[alice]}"), "user_domains"),
        (as_user(node, alice, "add", f"x.{bob}.apps.example.net", f"127.0.0.1:{ports[alice]}"), "user_domains"),
        (as_user(node, alice, "add", "static.example.net", f"127.0.0.1:{ports[alice]}"), "static app"),
        (as_user(node, alice, "add", f"{alice}.apps.example.net", f"127.0.0.1:{ports[bob]}"), "own_ports"),
        (as_user(node, bob, "add", f"{bob}.apps.example.net", f"127.0.0.1:{ports[alice]}"), "own_ports"),
        (as_user(node, alice, "add", f"{alice}.apps.example.net", "unix:/tmp/x.sock"), "own_ports"),
        (as_user(node, alice, "add", f"{alice}.apps.example.net", f"10.0.0.1:{ports[alice]}"), "own_ports"),
        (as_user(node, alice, "rm", f"{bob}.apps.example.net"), "user_domains"),
    ]
    for r, rule in refusals:
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and rule in r.stderr, (rule, r.stderr)
    assert node.get(f"{bob}.apps.example.net")[0] == 200


def test_only_root_and_the_broker_write_the_table(site, users):
    node, _ = site
    table = node.configs / "state" / "routes.json"
    r = subprocess.run(["runuser", "-u", users[0], "--", "sh", "-c", f"echo x >> {table}"], capture_output=True)
    assert r.returncode != 0

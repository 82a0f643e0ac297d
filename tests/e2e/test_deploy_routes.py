"""`make deploy` with the fleet route store: `[routes] store = "redis://..."` (a redis-server this
test starts) and [routes.self_service] make supervisord run `route-sync` and `route-broker`; a
route added with `frontgate route add --wait` is served through both stages, over TLS verified
against the development CA, and `route rm --wait` takes it away. Run under
`flock /tmp/frontgate-deploy.lock` (it binds the shipped ports)."""
from __future__ import annotations

import subprocess

import pytest

from frontgate_ops.route_broker import ask
from tests.e2e.test_deploy import deployed_copy, pid_of, supervisorctl
from tests.helpers import wait_until
from tests.redis_fixtures import RedisServer

# The development certificate names localhost, *.localhost and the static apps' hosts; clients
# (curl, OpenSSL) take no one-label wildcard under a single label, so `*.localhost` does not cover
# blog.localhost for them. A static app for blog.localhost/static/ puts the name in the certificate,
# and the route serves the rest of the host (static apps win for their paths).
HOST = "blog.localhost"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def with_redis_routes(url: str):
    def configure(repo) -> None:
        toml = repo / "configs" / "mux-router.toml"
        assert "[routes]" not in toml.read_text()
        toml.write_text(toml.read_text() + f"""
[[app]]
name = "blog-static"
hosts = ["{HOST}"]
path_prefix = "/static/"
servers = ["127.0.0.1:3000"]

[routes]
store = "{url}"
node = "e2e"
poll_interval = 1
[routes.self_service]
user_domains = ["{{user}}.apps.localhost"]
""")
    return configure


def frontgate_route(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(repo / ".venv/bin/frontgate"), "route", *args], cwd=repo, capture_output=True,
                          text=True, timeout=60)


def curl(repo, host: str, path: str = "/") -> tuple[int, str]:
    """HTTPS through the terminator and the router, the certificate verified (no -k)."""
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(repo / "certs/dev-ca/ca.pem"),
                        "--resolve", f"{host}:443:127.0.0.1", f"https://{host}{path}", "-w", "\n%{http_code}"],
                       capture_output=True, text=True, timeout=10)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body or r.stderr


def test_deploy_with_a_redis_store_runs_the_route_programs_and_serves_a_route_added_on_the_cli(
        tmp_path, redis_server):
    with deployed_copy(tmp_path, with_redis_routes(redis_server.url)) as (repo, output):
        status = supervisorctl(repo, "status").stdout
        for program in ("route-sync", "route-broker"):
            assert program in status and "RUNNING" in status.split(program, 1)[1].splitlines()[0], status
        pids = {program: pid_of(repo, program) for program in ("route-sync", "route-broker")}
        # `make deploy` returns when every program is RUNNING and the checker has checked every
        # server; the terminator may still be loading its certificates.
        wait_until(lambda: curl(repo, HOST)[0] != 0, timeout=10, what="port 443 answering")
        code, body = curl(repo, HOST)
        assert code == 404, (code, body)

        r = frontgate_route(repo, "add", HOST, "127.0.0.1:8000", "--wait")      # the demo app coltrane
        assert r.returncode == 0, r.stdout + r.stderr
        code, body = curl(repo, HOST)           # --wait returned: the router serves it now
        assert code == 200 and "coltrane" in body, (code, body)
        code, body = curl(repo, HOST, "/static/x")
        assert code == 200 and "maps" in body, (code, body)
        assert redis_server.cli("HEXISTS", "frontgate:routes:table", HOST) == "1"
        r = frontgate_route(repo, "status")
        assert "node e2e: version 1 up to date" in r.stdout, r.stdout + r.stderr

        r = frontgate_route(repo, "rm", HOST, "--wait")
        assert r.returncode == 0, r.stdout + r.stderr
        assert curl(repo, HOST)[0] == 404

        # The broker (what a user who is not root talks to) answers on its default socket; asked by
        # root, only the user_domains rule applies: root's name is root.apps.localhost.
        answer = ask(repo / "run" / "routes.sock", {"op": "add", "target": "root.apps.localhost",
                                                    "servers": ["127.0.0.1:8000"], "wait": True})
        assert answer.get("ok"), answer
        assert redis_server.cli("HEXISTS", "frontgate:routes:table", "root.apps.localhost") == "1"
        assert {program: pid_of(repo, program) for program in pids} == pids, "a route program restarted"

"""The whole pipeline as real subprocesses on ephemeral ports (demo apps, health-checker, mux-router,
tls-terminator) and in-test backends that run on their own event loop in a thread of the test
process. Shared by tests/integration/test_pipeline.py and the hostile-input / browser / chaos tests."""
from __future__ import annotations

import asyncio
import datetime
import http.client
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field

import pytest
import trustme

from tests.certmaker import make_leaf

from tests.helpers import BIN, REPO, daemon_output, free_port, start_daemon, stop_daemon, wait_until


class Pipeline:
    """Ports, paths and processes of one running pipeline.

    The keyword arguments tune it for one test module without touching the defaults:
    `extra_names` go into the site certificate (valid `cert_days` when given), `apps_first` is TOML
    placed before the demo apps (the first matching app wins, so it can shadow them),
    `checker_extra` is appended to health-checker.toml, `check_type` is the checker's default
    probe, `router_timeouts` / `terminator_settings` override keys of those tables."""

    def __init__(self, tmp_path, *, extra_names: tuple[str, ...] = (), apps_first: str = "",
                 checker_extra: str = "", router_timeouts: dict | None = None,
                 terminator_settings: dict | None = None, check_type: str = "http", cert_days: int | None = None):
        self.dir = tmp_path
        self.tls_port, self.router_port, self.public_port = free_port(), free_port(), free_port()
        self.maps_ports = [free_port(), free_port()]
        self.coltrane_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.ca = trustme.CA()
        self.state_file = tmp_path / "state" / "health.json"
        self.extra_names = extra_names
        self.apps_first = apps_first
        self.checker_extra = checker_extra
        self.router_timeouts = {"connect": 2, "server": 10, **(router_timeouts or {})}
        self.terminator_settings = terminator_settings or {}
        self.check_type = check_type
        self.cert_days = cert_days

    def write_configs(self):
        names = ("maps.localhost", "*.coltrane.localhost", "coltrane.localhost", "nobody.localhost", *self.extra_names)
        if self.cert_days is None:
            cert = self.ca.issue_cert(*names)
            cert.private_key_and_cert_chain_pem.write_to_path(str(self.dir / "site.pem"))
            (self.dir / "site.pem").chmod(0o600)
        else:
            # What scanners expect of a real site certificate: a lifetime of days, not trustme's
            # centuries, and an OCSP address (never contacted: the scan does not phone out).
            make_leaf(self.ca, *names, valid_to=datetime.timedelta(days=self.cert_days),
                      ocsp_url="http://127.0.0.1:9/ocsp").write_pem(self.dir / "site.pem")
        self.ca.cert_pem.write_to_path(str(self.dir / "ca.pem"))
        servers = ", ".join(f'"127.0.0.1:{p}"' for p in self.maps_ports)
        timeouts = "\n".join(f"{k} = {v}" for k, v in self.router_timeouts.items())
        terminator = "\n".join(f"{k} = {v}" for k, v in self.terminator_settings.items())
        (self.dir / "mux-router.toml").write_text(f"""
[router]
access_log_file = "-"                 # stdout: the tests read it with the daemon's output
state_file = "state/health.json"
state_stale_after = 5
trusted_sources = ["127.0.0.1/32"]
[listen.public]
address = "127.0.0.1:{self.public_port}"
[listen.from_terminator]
address = "127.0.0.1:{self.router_port}"
proxy_protocol = true
scheme = "https"
[timeouts]
{timeouts}
[[redirect]]
listener = "public"
source_not_in = ["trusted"]
to_scheme = "https"
code = 301
{self.apps_first}
[[app]]
name = "maps"
hosts = ["maps.localhost"]
retries = 0
servers = [{servers}]
[[app]]
name = "coltrane"
hosts = ["coltrane.localhost", "*.coltrane.localhost"]
servers = ["127.0.0.1:{self.coltrane_port}"]
""")
        (self.dir / "tls-terminator.toml").write_text(f"""
[terminator]
listen = "127.0.0.1:{self.tls_port}"
forward_to = "127.0.0.1:{self.router_port}"
{terminator}
[[certificate]]
cert = "site.pem"
""")
        (self.dir / "health-checker.toml").write_text(f"""
[checker]
router_config = "mux-router.toml"
heartbeat = 1
[defaults]
type = "{self.check_type}"
interval = 0.5
timeout = 0.5
rise = 1
fall = 3
{self.checker_extra}
""")

    def start_backend(self, name: str, port: int):
        argv = [str(BIN / "python"), str(REPO / "scripts" / "demo_app.py"), "--name", name, "--port", str(port)]
        if name == "maps":
            argv += ["--websocket-path", "/socket"]
        self.procs[f"{name}:{port}"] = start_daemon(argv, wait_for=("127.0.0.1", port))

    def start(self):
        self.write_configs()
        for port in self.maps_ports:
            self.start_backend("maps", port)
        self.start_backend("coltrane", self.coltrane_port)
        self.procs["health-checker"] = start_daemon(
            ["health-checker", "--config", str(self.dir / "health-checker.toml")])
        self.procs["mux-router"] = start_daemon(
            ["mux-router", "--config", str(self.dir / "mux-router.toml")], wait_for=("127.0.0.1", self.router_port))
        self.procs["tls-terminator"] = start_daemon(
            ["tls-terminator", "--config", str(self.dir / "tls-terminator.toml")],
            wait_for=("127.0.0.1", self.tls_port))
        wait_until(lambda: self.state_file.exists(), what="health state file written")

    def stop(self) -> str:
        # Reverse start order, as supervisord does: the front stops taking clients first.
        return "".join(f"--- {name}\n{stop_daemon(p)}" for name, p in reversed(self.procs.items()))

    # ---- clients

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def tls_socket(self, host: str, timeout: float = 10, source: str = "127.0.0.1") -> ssl.SSLSocket:
        """A TLS connection to the terminator by IP, asking for `host` by SNI."""
        return self.client_context().wrap_socket(
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=timeout, source_address=(source, 0)),
            server_hostname=host)

    def https_get(self, host: str, path: str = "/", source: str = "127.0.0.1") -> tuple[int, dict, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=10, source_address=(source, 0),
                                           context=self.client_context())
        # http.client sends SNI from the host it connects to; connect by IP but ask for the name.
        conn.sock = self.tls_socket(host, source=source)
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, dict(resp.getheaders()), body

    def http_get(self, host: str, path: str = "/", timeout: float = 10) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.public_port, timeout=timeout)
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        return resp.status, body

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)

    def router_output(self) -> str:
        """What the router has printed so far (its access log goes to stdout here)."""
        return daemon_output(self.procs["mux-router"])

    def pid(self, name: str) -> int:
        return self.procs[name].pid


def check_no_tracebacks(output: str) -> None:
    if any(word in output for word in ("Traceback", "Exception in callback")):
        pytest.fail(f"a daemon printed a traceback:\n{output}")


def running_pipeline(tmp_path, **kwargs):
    """Generator for fixtures: a started Pipeline, stopped afterwards; a traceback in any daemon's
    output fails the test."""
    p = Pipeline(tmp_path, **kwargs)
    try:
        p.start()
        yield p
    finally:
        output = p.stop()
    check_no_tracebacks(output)


# --------------------------------------------------------------------------- in-test backends

@dataclass
class Recorded:
    """One backend connection: every byte received, and whether the peer has closed it."""
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False


class ThreadServer:
    """An asyncio TCP server on 127.0.0.1 on its own event loop in a daemon thread, so a sync test
    can run it next to the daemons. `handler(reader, writer)` is a coroutine function."""

    def __init__(self, handler, port: int | None = None):
        self.handler = handler
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start():
            self._server = await asyncio.start_server(self.handler, "127.0.0.1", self.port, reuse_address=True)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def start(self) -> "ThreadServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("in-test backend did not start")
        return self

    def stop(self) -> None:
        async def close():
            self._server.close()
        fut = asyncio.run_coroutine_threadsafe(close(), self.loop)
        fut.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


RECORDING_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nrecorded\n"


class RecordingBackend(ThreadServer):
    """Records every byte of every connection and answers each with one fixed 200 once it has seen
    the end of a request head (it never parses further: what it received is judged by the test).
    Connections that carry no byte at all (TCP health checks) are not recorded."""

    def __init__(self, port: int | None = None):
        super().__init__(self._handle, port)
        self.lock = threading.Lock()
        self.connections: list[Recorded] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = Recorded()
        answered = False
        try:
            async with asyncio.timeout(30):
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    with self.lock:
                        if not rec.data:
                            self.connections.append(rec)
                        rec.data += data
                    if not answered and b"\r\n\r\n" in rec.data:
                        # Give the body a moment to arrive, so it is recorded before the router
                        # sees the response and closes.
                        await asyncio.sleep(0.05)
                        writer.write(RECORDING_RESPONSE)
                        answered = True
                        await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            rec.closed = True
            writer.close()

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return [bytes(c.data) for c in self.connections]

    def clear(self) -> None:
        with self.lock:
            self.connections.clear()

    def all_closed(self) -> bool:
        with self.lock:
            return all(c.closed for c in self.connections)

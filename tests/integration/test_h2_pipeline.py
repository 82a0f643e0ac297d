"""HTTP/2 through both stages with real clients: curl --http2, nghttp and h2load over TLS to the
real tls-terminator (ALPN h2, passed on in the PROXY header), the real mux-router speaking HTTP/2
to them and HTTP/1.1 to the demo backends."""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest

from tests.pipeline import ThreadServer, running_pipeline

pytestmark = pytest.mark.skipif(not (shutil.which("nghttp") and shutil.which("h2load")),
                                reason="nghttp2-client (nghttp, h2load) is not installed: make test installs it")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    yield from running_pipeline(tmp_path_factory.mktemp("h2pipe"))


def curl_h2(p, *args: str) -> subprocess.CompletedProcess:
    return p.curl("--http2", "--cacert", str(p.dir / "ca.pem"), "--resolve", f"maps.localhost:{p.tls_port}:127.0.0.1",
                  *args)


def test_curl_http2_through_both_stages(pipeline):
    url = f"https://maps.localhost:{pipeline.tls_port}/"
    r = curl_h2(pipeline, "-w", "\n%{http_version} %{http_code}", url)
    assert r.returncode == 0 and r.stdout.endswith("\n2 200"), r.stdout + r.stderr
    assert "maps" in r.stdout
    # A request body (POST) and several requests on the one connection.
    body = pipeline.dir / "body.bin"
    body.write_bytes(b"z" * 300_000)
    r = curl_h2(pipeline, "-w", "%{http_version} %{http_code} %{num_connects}\n", "--data-binary", f"@{body}",
                *[a for _ in range(3) for a in ("-o", "/dev/null", url)])
    assert r.returncode == 0 and r.stdout.split("\n")[:3] == ["2 200 1", "2 200 0", "2 200 0"], r.stdout + r.stderr
    # HTTP/1.1 clients are served as before.
    r = curl_h2(pipeline, "--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", url)
    assert r.stdout == "1.1 200", r.stdout + r.stderr


def test_nghttp_many_streams_on_one_connection(pipeline):
    url = f"https://127.0.0.1:{pipeline.tls_port}/"
    r = subprocess.run(["nghttp", "-n", "-s", "-m", "20", "-H", ":authority: maps.localhost", url],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    # Its statistics: one line per stream (id, times, status code, size, path), all on one connection.
    codes = re.findall(r"^\s*(\d+)\s+\+\S+\s+\+\S+\s+\S+\s+(\d{3})\s+\d+ /$", r.stdout, re.M)
    assert len(codes) == 20 and {code for _, code in codes} == {"200"}, r.stdout


def test_h2load_many_streams_every_request_answered(pipeline):
    port = pipeline.tls_port
    r = subprocess.run(["h2load", "-n", "400", "-c", "2", "-m", "20", f"--connect-to=127.0.0.1:{port}",
                        f"https://maps.localhost:{port}/"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Application protocol: h2" in r.stdout, r.stdout
    assert re.search(r"requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed", r.stdout), r.stdout
    assert "status codes: 400 2xx" in r.stdout, r.stdout


class CountingBackend(ThreadServer):
    """Answers every request head with a kept-alive 200 and counts the connections that carried
    a request for /pooled (not the health checker's)."""

    def __init__(self):
        super().__init__(self._handle)
        self.connections = 0

    async def _handle(self, reader, writer) -> None:
        counted = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not counted and head.split(b" ", 2)[1].startswith(b"/pooled"):
                    counted = True
                    self.connections += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_many_concurrent_streams_reuse_backend_connections(tmp_path):
    """200 streams at once need at most 200 backend connections: each released one waits in the
    pool for the next stream (an idle pool capped below the concurrency churned connections)."""
    backend = CountingBackend().start()
    apps = f'[[app]]\nname = "pool"\nhosts = ["pool.localhost"]\nservers = ["127.0.0.1:{backend.port}"]\n'
    try:
        for p in running_pipeline(tmp_path, extra_names=("pool.localhost",), apps_first=apps):
            port = p.tls_port
            uris = tmp_path / "uris.txt"
            uris.write_text("".join(f"https://pool.localhost:{port}/pooled?n={n}\n" for n in range(3000)))
            r = subprocess.run(["h2load", "-n", "3000", "-c", "2", "-m", "100", f"--connect-to=127.0.0.1:{port}",
                                "-i", str(uris)], capture_output=True, text=True, timeout=120)
            assert "status codes: 3000 2xx" in r.stdout, r.stdout + r.stderr
            assert 0 < backend.connections <= 200, backend.connections
    finally:
        backend.stop()

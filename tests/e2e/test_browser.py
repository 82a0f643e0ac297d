"""A real browser through the whole pipeline: headless Chromium loads a page from
https://maps.localhost:PORT (terminator -> router -> an in-test app) over HTTP/2, with many
sub-resources on that one connection (the page reports each one's nextHopProtocol), then opens
wss://maps.localhost:PORT/socket, exchanges messages with the app's echo, closes, and reports what
it saw (open = the 101, the echo, the clean close) back to the app with a GET /report?d=JSON.

Needs Debian's `chromium` (apt-get install -y chromium); skipped without it."""
from __future__ import annotations

import asyncio
import http
import json
import shutil
import subprocess
import threading
import time
import urllib.parse

import pytest
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from tests.pipeline import running_pipeline

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>waiting</title></head>
<body><pre id="log"></pre>
<script>
const seen = {events: [], protocol: location.protocol};
function log(event) { seen.events.push(event); document.getElementById("log").textContent += event + "\\n"; }
function report() {
  document.title = "done";
  fetch("/report?d=" + encodeURIComponent(JSON.stringify(seen)));
}
const SUBRESOURCES = 40;
function openSocket() {
const ws = new WebSocket("wss://" + location.host + "/socket");
const messages = ["hello from chromium", "x".repeat(70000), "bye"];
let sent = 0;
ws.onopen = () => { log("open"); ws.send(messages[sent++]); };
ws.onmessage = (e) => {
  log("echo:" + (e.data === messages[sent - 1] ? "ok" : "MISMATCH") + ":" + e.data.length);
  if (sent < messages.length) { ws.send(messages[sent++]); } else { ws.close(1000, "done"); }
};
ws.onerror = () => log("error");
ws.onclose = (e) => { log("close:" + e.code + ":" + e.wasClean); report(); };
}
Promise.all([...Array(SUBRESOURCES).keys()].map((i) => fetch("/sub/" + i).then((r) => r.text())))
  .then((bodies) => {
    seen.subresources = bodies.filter((b, i) => b === "sub " + i).length;
    seen.protocols = performance.getEntries().map((e) => e.nextHopProtocol).filter((p) => p);
    openSocket();
  }, (e) => { log("fetch failed: " + e); report(); });
setTimeout(() => { log("timeout"); report(); }, 15000);
</script></body></html>
"""


class PageApp:
    """The in-test app behind maps.localhost: the page, a WebSocket echo at /socket, /report."""

    def __init__(self):
        self.reports: list[dict] = []
        self.requests: list[tuple[str, dict]] = []
        self.port = None
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: self.loop.run_until_complete(self._main()), daemon=True)

    def _process_request(self, connection, request):
        self.requests.append((request.path, dict(request.headers.raw_items())))
        path, _, query = request.path.partition("?")
        if path == "/socket":
            return None         # go on with the WebSocket handshake
        if path == "/report":
            self.reports.append(json.loads(urllib.parse.parse_qs(query)["d"][0]))
            return Response(204, "No Content", Headers([("Content-Length", "0")]), b"")
        if path.startswith("/sub/"):
            body = f"sub {path[5:]}".encode()
            return Response(200, "OK", Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]),
                            body)
        if path == "/":
            body = PAGE.encode()
            return Response(200, "OK", Headers([("Content-Type", "text/html; charset=utf-8"),
                                                ("Content-Length", str(len(body)))]), body)
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")

    async def _echo(self, ws):
        async for message in ws:
            await ws.send(message)

    async def _main(self):
        self._stop = asyncio.Event()
        async with serve(self._echo, "127.0.0.1", 0, process_request=self._process_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def start(self) -> "PageApp":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def setup(tmp_path):
    app = PageApp().start()
    apps = f"""
[[app]]
name = "page"
hosts = ["maps.localhost"]
retries = 0
servers = ["127.0.0.1:{app.port}"]
"""
    try:
        for p in running_pipeline(tmp_path, apps_first=apps, check_type="tcp"):
            yield p, app
    finally:
        app.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_loads_a_page_and_talks_websocket_through_the_pipeline(setup, tmp_path):
    p, app = setup
    url = f"https://maps.localhost:{p.tls_port}/"
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-dev-shm-usage", "--ignore-certificate-errors",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--host-resolver-rules=MAP maps.localhost 127.0.0.1", url]
    t0 = time.monotonic()
    browser = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 45
        while not app.reports and time.monotonic() < deadline and browser.poll() is None:
            time.sleep(0.1)
    finally:
        browser.terminate()
        try:
            _, err = browser.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            _, err = browser.communicate(timeout=5)
    took = time.monotonic() - t0
    assert app.reports, f"the page never reported back ({took:.1f}s); chromium said:\n{err.decode(errors='replace')[-3000:]}"
    seen = app.reports[0]
    assert seen["protocol"] == "https:"
    # The page and its 40 sub-resources came over HTTP/2, on one connection: one TLS connection to
    # the terminator, so one client port in every access-log line of theirs.
    assert seen["subresources"] == 40 and len(seen["protocols"]) >= 41, seen
    assert set(seen["protocols"]) == {"h2"}, seen
    lines = [line for line in p.router_output().splitlines() if '"GET /sub/' in line]
    assert len(lines) == 40 and all(line.endswith(' HTTP/2.0"') for line in lines), lines
    assert len({line.split(" [")[0] for line in lines}) == 1, lines
    # The WebSocket went on HTTP/1.1, on a connection of its own (no RFC 8441 offered).
    assert seen["events"] == ["open", "echo:ok:19", "echo:ok:70000", "echo:ok:3", "close:1000:true"], seen
    # The page and the upgrade went through the terminator and the router (https, forwarded for).
    page_headers = dict((k.lower(), v) for k, v in next(h for path, h in app.requests if path == "/").items())
    socket_headers = dict((k.lower(), v) for k, v in next(h for path, h in app.requests if path == "/socket").items())
    assert page_headers["x-forwarded-proto"] == "https" and page_headers["x-forwarded-for"] == "127.0.0.1"
    assert socket_headers["upgrade"].lower() == "websocket" and socket_headers["x-forwarded-proto"] == "https"
    assert "Chrome" in page_headers["user-agent"]

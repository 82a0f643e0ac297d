"""Slow and hostile clients against the running pipeline: slowloris on both listeners, slow readers
of large responses, many idle connections, resets mid-body, garbage and protocol confusion.

Each test bounds its own loops in count and time; the pipeline's timeouts are short so that the
daemons' own limits (http_request, handshake_timeout) are what ends the slow clients."""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import random
import resource
import selectors
import socket
import struct
import threading
import time

import psutil
import pytest

from tests import fuzz_targets
from tests.helpers import daemon_output, wait_until
from tests.pipeline import RecordingBackend, ThreadServer, running_pipeline

HEAD_TIMEOUT = 2          # router [timeouts] http_request
HANDSHAKE_TIMEOUT = 2     # terminator handshake_timeout
MAX_TLS_CONNECTIONS = 1000
BULK_SIZE = 64 * 1024 * 1024
BLOCK = bytes(range(256)) * 256      # 64 KiB


class BulkBackend(ThreadServer):
    """Answers every request with BULK_SIZE bytes as fast as the router takes them."""

    def __init__(self):
        super().__init__(self._handle)

    async def _handle(self, reader, writer):
        try:
            async with asyncio.timeout(60):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % BULK_SIZE)
                for _ in range(BULK_SIZE // len(BLOCK)):
                    writer.write(BLOCK)
                    await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


BULK_SHA256 = hashlib.sha256(BLOCK * (BULK_SIZE // len(BLOCK))).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    raw, bulk = RecordingBackend().start(), BulkBackend().start()
    apps = f"""
[[app]]
name = "raw"
hosts = ["raw.localhost"]
retries = 0
servers = ["127.0.0.1:{raw.port}"]
[[app]]
name = "bulk"
hosts = ["bulk.localhost"]
retries = 0
servers = ["127.0.0.1:{bulk.port}"]
"""
    try:
        for p in running_pipeline(
                tmp_path_factory.mktemp("hostile"), extra_names=("raw.localhost", "bulk.localhost"),
                apps_first=apps, check_type="tcp",
                router_timeouts={"http_request": HEAD_TIMEOUT, "client": 5},
                terminator_settings={"handshake_timeout": HANDSHAKE_TIMEOUT, "max_connections": MAX_TLS_CONNECTIONS}):
            p.raw, p.bulk = raw, bulk
            yield p
    finally:
        raw.stop()
        bulk.stop()


def served_quickly(p, limit: float = 1.5) -> float:
    """A normal request through each listener succeeds, and fast; returns the slower time."""
    t0 = time.monotonic()
    assert p.http_get("maps.localhost", timeout=limit + 3)[0] == 200
    t1 = time.monotonic()
    assert p.https_get("maps.localhost")[0] == 200
    t2 = time.monotonic()
    took = max(t1 - t0, t2 - t1)
    assert took < limit, f"a normal request took {took:.2f}s while under attack"
    return took


def trickle(socks: list[socket.socket], data: bytes, interval: float, max_time: float) -> dict[int, tuple[float, bytes]]:
    """Send `data` one byte per `interval` on every socket until the peer closes it or
    `max_time` passes. Returns, per socket index, when it was closed and what it received."""
    start = time.monotonic()
    ended: dict[int, tuple[float, bytes]] = {}
    received = {i: b"" for i in range(len(socks))}
    for s in socks:
        s.setblocking(False)
    for step in range(int(max_time / interval) + 1):
        for i, s in enumerate(socks):
            if i in ended:
                continue
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        ended[i] = (time.monotonic() - start, received[i])
                        break
                    received[i] += chunk
            except BlockingIOError:
                pass
            except OSError:
                ended[i] = (time.monotonic() - start, received[i])
            if i not in ended and step < len(data):
                try:
                    s.send(data[step:step + 1])
                except OSError:
                    ended[i] = (time.monotonic() - start, received[i])
        if len(ended) == len(socks) or time.monotonic() - start > max_time:
            break
        time.sleep(interval)
    return ended


def test_slowloris_head_on_the_plain_listener(setup):
    p = setup
    head = b"GET / HTTP/1.1\r\nHost: maps.localhost\r\n" + b"X-Slow: " + b"a" * 200
    socks = [socket.create_connection(("127.0.0.1", p.public_port), timeout=5) for _ in range(50)]
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(trickle(socks, head, 0.1, HEAD_TIMEOUT + 4)))
    worker.start()
    time.sleep(0.5)
    served_quickly(p)
    worker.join(HEAD_TIMEOUT + 8)
    for s in socks:
        s.close()
    assert len(result) == 50, f"{50 - len(result)} slowloris connections still open after {HEAD_TIMEOUT + 4}s"
    for closed_at, received in result.values():
        assert closed_at < HEAD_TIMEOUT + 2, f"closed only after {closed_at:.1f}s"
        assert received.startswith(b"HTTP/1.1 408 "), received[:100]


def test_slowloris_tls_client_hello(setup):
    p = setup
    hello = fuzz_targets.real_client_hellos()[0]
    socks = [socket.create_connection(("127.0.0.1", p.tls_port), timeout=5) for _ in range(50)]
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(trickle(socks, hello, 0.1, HANDSHAKE_TIMEOUT + 4)))
    worker.start()
    time.sleep(0.5)
    served_quickly(p)
    worker.join(HANDSHAKE_TIMEOUT + 8)
    for s in socks:
        s.close()
    assert len(result) == 50, f"{50 - len(result)} trickled handshakes still open after {HANDSHAKE_TIMEOUT + 4}s"
    assert max(t for t, _ in result.values()) < HANDSHAKE_TIMEOUT + 2


def rss(proc) -> int:
    return psutil.Process(proc.pid).memory_info().rss


@pytest.mark.parametrize("listener", ["public", "tls"])
def test_slow_reader_of_a_large_response_keeps_memory_bounded(setup, listener):
    p = setup
    if listener == "tls":
        sock = p.tls_socket("bulk.localhost")
    else:
        sock = socket.create_connection(("127.0.0.1", p.public_port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    before = {name: rss(p.procs[name]) for name in ("mux-router", "tls-terminator")}
    with sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: bulk.localhost\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        # Stop reading: the backend can send 64 MiB in a fraction of a second; whatever is not
        # held back by backpressure piles up in the router's (or terminator's) memory.
        time.sleep(2.0)
        grown = {name: rss(p.procs[name]) - before[name] for name in before}
        assert all(g < 24 * 1024 * 1024 for g in grown.values()), f"RSS grew by {grown} for a stalled reader"
        # Then read it all: nothing lost or changed by the pause.
        head, _, body_start = first.partition(b"\r\n\r\n")
        digest, got = hashlib.sha256(body_start), len(body_start)
        sock.settimeout(10)
        deadline = time.monotonic() + 30
        while got < BULK_SIZE and time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
    assert got == BULK_SIZE and digest.hexdigest() == BULK_SHA256


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("listener", ["public", "tls"])
def test_client_resetting_mid_body(setup, listener):
    p = setup
    p.raw.clear()
    for attempt in range(5):
        sock = p.tls_socket("raw.localhost") if listener == "tls" else \
            socket.create_connection(("127.0.0.1", p.public_port), timeout=10)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: raw.localhost\r\nContent-Length: 1000000\r\n\r\n")
        sock.sendall(b"x" * 100_000)
        time.sleep(0.1)
        reset(sock)
    # Every backend connection carried one cut-short request and was closed; nothing else.
    wait_until(lambda: len(p.raw.snapshot()) == 5 and p.raw.all_closed(), timeout=5,
               what="backend connections of the reset clients closed")
    for data in p.raw.snapshot():
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"POST /upload HTTP/1.1\r\n") and b"Content-Length: 1000000" in head
        assert len(body) <= 100_000
    served_quickly(p)
    assert "Traceback" not in daemon_output(p.procs["mux-router"])


GARBAGE_SEEDS = range(40)


def test_garbage_to_the_plain_listener(setup):
    p = setup
    p.raw.clear()
    blobs = [random.Random(seed).randbytes(random.Random(seed).randint(1, 3000)) for seed in GARBAGE_SEEDS]
    blobs += [fuzz_targets.real_client_hellos()[0],                   # TLS to the plain port
              b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
              b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",                     # HTTP/2 preface
              b"\r\n" * 50,
              b"\x00" * 1000,
              b"SSH-2.0-OpenSSH_9.2\r\n"]

    def exchange(blob: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", p.public_port), timeout=HEAD_TIMEOUT + 3) as s:
            try:
                s.sendall(blob)
                reply = b""
                while len(reply) < 100_000:
                    chunk = s.recv(65536)
                    if not chunk:
                        return reply
                    reply += chunk
            except ConnectionResetError:
                return b"<reset>"
        return reply

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(exchange, blobs))
    for blob, reply in zip(blobs, replies):
        # A 400 (or 408 for an incomplete line, or a silent close for nothing usable), never a 2xx.
        assert reply in (b"", b"<reset>") or reply[:13] in (b"HTTP/1.1 400 ", b"HTTP/1.1 408 ", b"HTTP/1.1 414 ",
                                                            b"HTTP/1.1 431 ", b"HTTP/1.1 505 ", b"HTTP/1.1 501 "), \
            (blob[:60], reply[:200])
    assert p.raw.snapshot() == []
    served_quickly(p)


def test_http_sent_to_the_tls_port(setup):
    p = setup
    router_log = len(daemon_output(p.procs["mux-router"]))
    for request in (b"GET / HTTP/1.1\r\nHost: maps.localhost\r\n\r\n", b"\x00" * 64, b"\x16\x03\x01\x00\x00"):
        with socket.create_connection(("127.0.0.1", p.tls_port), timeout=HANDSHAKE_TIMEOUT + 3) as s:
            s.sendall(request)
            t0 = time.monotonic()
            reply = b""
            try:
                while len(reply) < 10_000:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
            except ConnectionResetError:
                pass
            took = time.monotonic() - t0
        # Closed (a TLS alert at most) well before the handshake timeout, nothing HTTP-ish back.
        assert took < HANDSHAKE_TIMEOUT + 1, f"the terminator held {request[:20]!r} for {took:.1f}s"
        assert not reply.startswith(b"HTTP/"), reply[:100]
        assert len(reply) < 100
    # Nothing of it reached the router as a request.
    new_log = daemon_output(p.procs["mux-router"])[router_log:]
    assert '"GET / HTTP/1.1"' not in new_log, new_log
    served_quickly(p)


def _open_many(port: int, count: int, deadline: float, batch: int = 250) -> list[socket.socket]:
    """`count` established TCP connections (the kernel completed the handshake), opened in batches
    so that the listen backlog never overflows into SYN retries; bounded by `deadline`."""
    socks: list[socket.socket] = []
    while len(socks) < count and time.monotonic() < deadline:
        pending = []
        for _ in range(min(batch, count - len(socks))):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            pending.append(s)
        sel = selectors.DefaultSelector()
        for s in pending:
            sel.register(s, selectors.EVENT_WRITE)
        waiting = set(pending)
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                sel.unregister(key.fileobj)
                waiting.discard(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    socks.append(key.fileobj)
                else:
                    key.fileobj.close()
        sel.close()
        for s in waiting:
            s.close()
    return socks


def _count_closed(socks: list[socket.socket], timeout: float) -> int:
    """How many of `socks` the peer closes within `timeout`."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed, deadline = 0, time.monotonic() + timeout
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
    sel.close()
    return closed


@pytest.mark.slow
def test_ten_thousand_idle_connections_to_the_router(setup):
    p = setup
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 10_500:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 10500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    router_before = rss(p.procs["mux-router"])
    socks = _open_many(p.public_port, 10_000, time.monotonic() + 20)
    try:
        assert len(socks) == 10_000
        time.sleep(0.5)
        served_quickly(p, limit=2.0)
        assert rss(p.procs["mux-router"]) - router_before < 200 * 1024 * 1024
        # Connections that never send a byte are dropped after http_request.
        closed = _count_closed(socks, HEAD_TIMEOUT + 15)
        assert closed == len(socks), f"only {closed} of {len(socks)} idle connections were closed"
        served_quickly(p)
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_ten_thousand_idle_connections_to_the_terminator(setup):
    p = setup
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 10_500:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 10500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    terminator = psutil.Process(p.procs["tls-terminator"].pid)
    socks = _open_many(p.tls_port, 10_000, time.monotonic() + 20)
    try:
        time.sleep(1.0)
        # max_connections holds: the rest wait in the kernel's backlog (or are refused by it).
        peak = max(terminator.num_fds() for _ in range(10) if time.sleep(0.1) is None)
        assert peak < MAX_TLS_CONNECTIONS + 100, f"terminator holds {peak} fds, max_connections {MAX_TLS_CONNECTIONS}"
        # Each idle one is closed after handshake_timeout, so the backlog drains and a new client
        # gets through within a bounded time.
        t0 = time.monotonic()
        status = p.https_get("maps.localhost")[0]
        assert status == 200
        assert time.monotonic() - t0 < (10_000 / MAX_TLS_CONNECTIONS + 2) * HANDSHAKE_TIMEOUT
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_until(lambda: terminator.num_fds() < 100, timeout=HANDSHAKE_TIMEOUT * 3, what="terminator fds released")
    served_quickly(p)

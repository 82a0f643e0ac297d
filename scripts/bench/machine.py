"""The router's per-request CPU cost in process, without sockets: far steadier than a loopback run
on a shared machine, and what a profile of the engine should be taken of.

  python -m scripts.bench.machine [--requests N] [--profile] [--rounds R]

One client connection (client.ClientProtocol, as the router makes it) and one pooled backend
connection (backends.BackendConnection), both on transports that only count the bytes written to
them. Each request is different, as the benchmark's varied wrk script sends them (its own query
string and cookie); the backend answers each with nginx's head for a 1 KiB static file and the
body. Everything between the two transports runs as in the daemon: the exchange machine, routing,
the dispatch to the pooled connection, the heads written, the access-log call (log off, as
scenario 4's `router_nolog`), the stats. What it leaves out is the event loop and the syscalls.
Prints CPU µs per request (process_time), the best of the rounds; `--profile`: cProfile's top
entries by own time instead.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from frontgate.config import load_router_config
from scripts.bench import configs

BODY = b"x" * 1024
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
            b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: keep-alive\r\n"
            b'ETag: "65920080-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY)


def request(n: int) -> bytes:
    """What wrk sends with scenarios.VARIED_REQUESTS (thread 1, request n)."""
    return (f"GET /1k.bin?t=1&n={n} HTTP/1.1\r\nHost: {configs.HOST_STATIC}\r\n"
            f"Cookie: session=1-{n}\r\n\r\n").encode()


class _Transport:
    """A transport that takes what is written and forgets it."""

    def __init__(self, peername=("127.0.0.1", 40000)):
        self.peername, self.written = peername, 0

    def write(self, data) -> None:
        self.written += len(data)

    def writelines(self, chunks) -> None:
        for data in chunks:
            self.written += len(data)

    def get_extra_info(self, name, default=None):
        return self.peername if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the connection closed: the exchange refused something")

    abort = close


async def _setup(workdir: Path):
    from mux_router.backends import BackendConnection
    from mux_router.client import ClientProtocol
    from mux_router.router import Router

    backends = configs.Backends(nginx=9, ws_echo=8)
    toml = configs.router_toml(workdir, 8080, None, backends, workers=1)
    (workdir / "mux-router.toml").write_text(toml)
    router = Router(load_router_config(workdir / "mux-router.toml"))
    router.listeners = {l.address: l for l in router.config.listeners}
    listener = router.config.listeners[0]
    client = ClientProtocol(router, listener)
    client.connection_made(_Transport())
    app = next(a for a in router.config.apps if a.name == "static")
    conn = BackendConnection(app.servers[0])
    conn.connection_made(_Transport())
    router.backends.release(conn, True)
    return client, conn


def _run(client, conn, first: int, count: int) -> float:
    """CPU seconds for `count` requests, numbered from `first`."""
    requests = [request(n) for n in range(first, first + count)]
    data_received, backend_data = client.data_received, conn.data_received
    forwarded, answered = conn.transport.written, client.transport.written
    started = time.process_time()
    for r in requests:
        data_received(r)
        backend_data(RESPONSE)
    spent = time.process_time() - started
    # Each request went on to the backend and its response back: none was answered by the router.
    if (conn.transport.written - forwarded < sum(map(len, requests))
            or client.transport.written - answered < count * len(BODY)):
        raise RuntimeError("some requests did not go through the backend")
    return spent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.machine", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile one round: the top entries by own time")
    args = p.parse_args(argv)

    async def measure() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            client, conn = await _setup(Path(tmp))
            _run(client, conn, 0, 2000)         # warm up
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                _run(client, conn, 10**6, args.requests)
                profile.disable()
                pstats.Stats(profile).sort_stats("tottime").print_stats(60)
                return
            best = min(_run(client, conn, 10**6 * (i + 1), args.requests) for i in range(args.rounds))
            print(f"{best / args.requests * 1e6:.2f} µs CPU per request (best of {args.rounds} rounds "
                  f"of {args.requests:,})")

    import uvloop
    uvloop.run(measure())


if __name__ == "__main__":
    main()

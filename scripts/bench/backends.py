"""The benchmark's own backends, run as separate processes:

  python -m scripts.bench.backends ws-echo --port P
      A WebSocket echo server (plain ws; the proxies under test carry the TLS).
  python -m scripts.bench.backends sleepy --port P [--workers 4] [--delay 0.05]
      Seed 001's Flask app: every request sleeps 50 ms, 4 requests at a time at most, then the
      connection closes (the Werkzeug dev server of the seed spoke HTTP/1.0). Capacity: 80 req/s.
"""
from __future__ import annotations

import argparse
import http.server
import socketserver
import time
from concurrent.futures import ThreadPoolExecutor


def serve_ws_echo(port: int) -> None:
    import uvloop
    from websockets.asyncio.server import serve

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        # No keepalive pings: idle tunnels must really be idle while we measure memory.
        async with serve(echo, "127.0.0.1", port, ping_interval=None, backlog=4096,
                         max_size=1 << 20, compression=None) as server:
            await server.serve_forever()

    uvloop.run(main())


class _SleepyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    delay = 0.05
    body = b"Hello from bench\n"

    def do_GET(self) -> None:
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:   # one line per request would cost more than the request
        pass


class _PoolServer(socketserver.TCPServer):
    """At most `workers` requests in service at once, like Flask's processes=4; the rest wait."""
    allow_reuse_address = True
    request_queue_size = 1024     # ab -c100 must queue, not get SYN-dropped

    def __init__(self, addr, handler, workers: int):
        super().__init__(addr, handler)
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def process_request(self, request, client_address) -> None:
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


def serve_sleepy(port: int, workers: int, delay: float) -> None:
    _SleepyHandler.delay = delay
    with _PoolServer(("127.0.0.1", port), _SleepyHandler, workers) as server:
        server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.backends")
    sub = p.add_subparsers(dest="kind", required=True)
    ws = sub.add_parser("ws-echo")
    ws.add_argument("--port", type=int, required=True)
    sl = sub.add_parser("sleepy")
    sl.add_argument("--port", type=int, required=True)
    sl.add_argument("--workers", type=int, default=4)
    sl.add_argument("--delay", type=float, default=0.05)
    args = p.parse_args()
    try:
        if args.kind == "ws-echo":
            serve_ws_echo(args.port)
        else:
            serve_sleepy(args.port, args.workers, args.delay)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

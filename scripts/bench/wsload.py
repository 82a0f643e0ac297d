"""WebSocket load client for scenario 5, run as its own process so that its memory and CPU are
nobody else's. Prints one JSON object on stdout.

  idle --port P --count N --pids 12,34 [--hold S]
      Opens N wss tunnels (at most 64 handshakes in flight), waits for the proxies to settle,
      measures the resident memory of the process trees `--pids` before and after, closes them.
  echo --port P --tunnels 100 --duration S [--size 64]
      100 tunnels, each sending a message and awaiting its echo in a loop; round-trip percentiles.

Everything is bounded: connection and message timeouts, and the duration.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time

import uvloop
from websockets.asyncio.client import connect

from scripts.bench.configs import HOST_WS
from scripts.bench.parse import percentile
from scripts.bench.procs import tree_rss

URI = f"wss://{HOST_WS}/echo"          # no port in the URI: the Host header stays the bare name


def _client_ssl() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE    # the benchmark's self-signed certificate
    return ctx


async def _open(port: int, ctx: ssl.SSLContext, timeout: float):
    return await connect(URI, ssl=ctx, host="127.0.0.1", port=port, ping_interval=None,
                         open_timeout=timeout, close_timeout=2, compression=None, max_queue=4)


async def idle(port: int, count: int, pids: list[int], settle: float, timeout: float) -> dict:
    ctx = _client_ssl()
    before = tree_rss(pids)
    gate = asyncio.Semaphore(64)
    opened, failures = [], []

    async def one() -> None:
        async with gate:
            try:
                opened.append(await _open(port, ctx, timeout))
            except Exception as e:  # noqa: BLE001 - counted and reported, never fatal
                failures.append(type(e).__name__)

    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout=timeout + count / 50)
    open_seconds = time.monotonic() - t0
    # Tunnels are only idle once every hop has finished its handshake; check each one still echoes.
    alive = 0
    probe = opened[:: max(1, len(opened) // 50)] if opened else []
    for ws in probe:
        try:
            await ws.send(b"x")
            await asyncio.wait_for(ws.recv(), 5)
            alive += 1
        except Exception:  # noqa: BLE001
            pass
    await asyncio.sleep(settle)
    after = tree_rss(pids)
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return {"requested": count, "opened": len(opened), "failed": len(failures),
            "failure_kinds": sorted(set(failures)), "probed": len(probe), "probe_ok": alive,
            "open_seconds": open_seconds, "rss_before": before, "rss_after": after,
            "rss_per_tunnel": (after - before) / len(opened) if opened else None}


async def echo(port: int, tunnels: int, duration: float, size: int, timeout: float) -> dict:
    ctx = _client_ssl()
    gate = asyncio.Semaphore(64)

    async def one():
        async with gate:
            return await _open(port, ctx, timeout)

    conns = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(tunnels))), timeout=timeout + tunnels / 20)
    payload = b"x" * size
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration

    async def loop(ws) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            try:
                await ws.send(payload)
                await asyncio.wait_for(ws.recv(), timeout)
            except Exception:  # noqa: BLE001
                errors += 1
                return
            latencies.append(time.perf_counter() - t)

    t0 = time.monotonic()
    await asyncio.gather(*(loop(ws) for ws in conns))
    elapsed = time.monotonic() - t0
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    latencies.sort()
    return {"tunnels": tunnels, "messages": len(latencies), "errors": errors, "seconds": elapsed,
            "messages_per_s": len(latencies) / elapsed if elapsed else 0.0,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.bench.wsload")
    sub = p.add_subparsers(dest="mode", required=True)
    i = sub.add_parser("idle")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--pids", default="")
    i.add_argument("--settle", type=float, default=1.0)
    i.add_argument("--timeout", type=float, default=30.0)
    e = sub.add_parser("echo")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--tunnels", type=int, default=100)
    e.add_argument("--duration", type=float, required=True)
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    if args.mode == "idle":
        pids = [int(x) for x in args.pids.split(",") if x]
        result = uvloop.run(idle(args.port, args.count, pids, args.settle, args.timeout))
    else:
        result = uvloop.run(echo(args.port, args.tunnels, args.duration, args.size, args.timeout))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()

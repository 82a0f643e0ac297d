"""`mux-router --config configs/mux-router.toml`: the HTTP router daemon."""
from __future__ import annotations

from frontgate.config import load_router_config
from frontgate.daemon import run, start
from mux_router.router import Router

NAME = "mux-router"


def main() -> None:
    _, log, status, fingerprint, config = start(
        NAME, "HTTP/1.1 and HTTP/2 router: Host/path routing, redirects, balancing, WebSocket tunnels",
        load_router_config)

    async def serve() -> None:
        router = Router(config, status)
        try:
            await router.start()
        except OSError as e:
            log.error("cannot start: %s", e)
            raise SystemExit(1) from None
        status.started(fingerprint)
        await router.serve()
        status.stopped()
        log.info("stopped")

    run(serve)


if __name__ == "__main__":
    main()

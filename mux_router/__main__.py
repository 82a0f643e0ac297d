"""`mux-router --config configs/mux-router.toml`: the HTTP router daemon."""
from __future__ import annotations

from frontgate.config import load_router_config
from frontgate.daemon import load_or_exit, parse_args, process_status, run, setup_logging
from mux_router.router import Router

NAME = "mux-router"


def main() -> None:
    args = parse_args(NAME, "HTTP/1.1 router: Host/path routing, redirects, balancing, WebSocket tunnels")
    log = setup_logging(NAME)
    status = process_status(NAME, args)
    fingerprint = status.config_on_disk()
    config = load_or_exit(load_router_config, args.config)

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

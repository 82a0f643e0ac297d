"""`tls-terminator --config configs/tls-terminator.toml`: the TLS front of frontgate."""
from __future__ import annotations

import sys

from frontgate.config import ConfigError, load_terminator_config
from frontgate.daemon import EXIT_CONFIG_ERROR, run, start
from tls_terminator.certs import CertStore
from tls_terminator.terminator import serve

NAME = "tls-terminator"


def main() -> None:
    _, _, status, fingerprint, cfg = start(
        NAME, "Terminate TLS (SNI certificate choice) and relay to the router with PROXY v2.", load_terminator_config)
    try:
        store = CertStore.from_config(cfg)
    except ConfigError as e:
        # Same contract as a config error: one line naming the file, the key and the problem.
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    run(lambda: serve(cfg, store, status, fingerprint))


if __name__ == "__main__":
    main()

"""`health-checker --config configs/health-checker.toml`: probe every backend server, write the state file."""
from __future__ import annotations

from frontgate.config import load_checker_config
from frontgate.daemon import run, start
from health_checker.checker import serve


def main() -> None:
    s = start("health-checker", "Probe every backend server of the router config and write the health "
                                "state file the router follows.", load_checker_config)
    run(lambda: serve(s.config, s.args.config, s.status, s.fingerprint))


if __name__ == "__main__":
    main()

"""`health-checker --config configs/health-checker.toml`: probe every backend server, write the state file."""
from __future__ import annotations

from frontgate.config import load_checker_config
from frontgate.daemon import load_or_exit, parse_args, run, setup_logging
from health_checker.checker import serve


def main() -> None:
    args = parse_args("health-checker", "Probe every backend server of the router config and write the "
                                        "health state file the router follows.")
    setup_logging("health-checker")
    config = load_or_exit(load_checker_config, args.config)
    run(lambda: serve(config, args.config))


if __name__ == "__main__":
    main()

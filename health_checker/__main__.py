"""`health-checker --config configs/health-checker.toml`: probe every backend server, write the state file."""
from __future__ import annotations

from frontgate.config import load_checker_config
from frontgate.daemon import load_or_exit, parse_args, process_status, run, setup_logging
from health_checker.checker import serve


def main() -> None:
    args = parse_args("health-checker", "Probe every backend server of the router config and write the "
                                        "health state file the router follows.")
    setup_logging("health-checker")
    status = process_status("health-checker", args)
    fingerprint = status.config_on_disk()
    config = load_or_exit(load_checker_config, args.config)
    run(lambda: serve(config, args.config, status, fingerprint))


if __name__ == "__main__":
    main()

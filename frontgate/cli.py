"""`frontgate`: the operator's command line.

    frontgate check [--configs DIR]    validate the three TOML files (and the certificates they name)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frontgate.config import (ConfigError, load_checker_config, load_router_config,
                              load_terminator_config)
from frontgate.daemon import EXIT_CONFIG_ERROR

STAGES = ("tls-terminator", "mux-router", "health-checker")


def check_configs(configs: Path) -> list[str]:
    """Every problem in the three configs, one line each; empty when all is well."""
    errors: list[str] = []
    try:
        terminator = load_terminator_config(configs / "tls-terminator.toml")
    except ConfigError as e:
        errors.append(str(e))
    else:
        # Import here: the certificate code pulls in pyOpenSSL, which the other checks don't need.
        from tls_terminator.certs import check_certificates
        errors.extend(check_certificates(terminator))
    for loader, name in ((load_router_config, "mux-router"), (load_checker_config, "health-checker")):
        try:
            loader(configs / f"{name}.toml")
        except ConfigError as e:
            errors.append(str(e))
    return errors


def cmd_check(args: argparse.Namespace) -> int:
    errors = check_configs(args.configs)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        return EXIT_CONFIG_ERROR
    print(f"ok: {', '.join(f'{s}.toml' for s in STAGES)} in {args.configs} are valid")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="frontgate", description="frontgate operations")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate the three configs; exit 2 on any error")
    c.add_argument("--configs", type=Path, default=Path("configs"), help="config directory (default: configs)")
    c.set_defaults(func=cmd_check)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

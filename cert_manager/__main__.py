"""`cert-manager --config configs/cert-manager.toml`: obtain and renew ACME certificates for the
configured names into the terminator's certs_dir (http-01 answered by the router)."""
from __future__ import annotations

from cert_manager.manager import serve
from frontgate.config.cert_manager import load_cert_manager_config
from frontgate.daemon import load_or_exit, parse_args, process_status, run, setup_logging


def main() -> None:
    args = parse_args("cert-manager", "Obtain and renew ACME (RFC 8555) certificates for the configured "
                                      "names, validated by http-01 through the router.")
    setup_logging("cert-manager")
    status = process_status("cert-manager", args)
    fingerprint = status.config_on_disk()
    config = load_or_exit(load_cert_manager_config, args.config)
    run(lambda: serve(config, args.config, status, fingerprint))


if __name__ == "__main__":
    main()

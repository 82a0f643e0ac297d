"""`cert-manager --config configs/cert-manager.toml`: obtain and renew ACME certificates for the
configured names into the terminator's certs_dir (http-01 answered by the router)."""
from __future__ import annotations

from cert_manager.manager import serve
from frontgate.config.cert_manager import load_cert_manager_config
from frontgate.daemon import run, start


def main() -> None:
    s = start("cert-manager", "Obtain and renew ACME (RFC 8555) certificates for the configured names, "
                              "validated by http-01 through the router.", load_cert_manager_config)
    run(lambda: serve(s.config, s.args.config, s.status, s.fingerprint))


if __name__ == "__main__":
    main()

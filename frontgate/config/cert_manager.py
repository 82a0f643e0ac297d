"""cert-manager.toml: which names get ACME certificates, from which CA, into which directories.

Parsed with config.py's Table machinery (every problem names file, key and what is wrong; unknown
keys are errors; relative paths are from the TOML file's directory). Names are exact host names in
frontgate.names' form: listed in `names`, and (with `router_config`) every exact host of the
router's apps marked `acme = true`. Never a wildcard (http-01 cannot prove one), never an IP
address, never a name only because a client asked for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from frontgate import names
from frontgate.config.common import AdminConfig, admin_table
from frontgate.config.router import RouterConfig, load_router_config
from frontgate.config.schema import ConfigError, Table, load

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class CertManagerConfig:
    path: Path
    directory_url: str
    contact: tuple[str, ...]
    account_key: Path
    ca_bundle: Path | None                 # trust for the directory's HTTPS; None: the system's
    key_type: str
    names: tuple[str, ...]                 # every name that gets a certificate, normalised, sorted
    router_config: Path | None
    certs_dir: Path
    challenge_dir: Path
    state_dir: Path
    retry_min: float                       # the first back-off after a failure (seconds)
    retry_max: float                       # back-off ceiling
    order_timeout: float                   # one order's polling, from new order to certificate
    expiry_warning_days: float
    admin: AdminConfig | None = None


def _name(t: Table, key: str, value: str) -> str:
    """An exact DNS name, normalised; ConfigError for a wildcard, an IP address or a non-name."""
    try:
        if names.is_ip_literal(value):
            raise names.BadName(f"{value!r} is an IP address; cert-manager issues for host names only")
        if "*" in value:
            raise names.BadName(f"{value!r}: http-01 cannot validate a wildcard; list the exact names")
        return names.normalize(value)
    except names.BadName as e:
        raise ConfigError(t.file, key, str(e)) from None


def _path(t: Table, key: str, default: str) -> Path:
    """Table.path, with the default resolved from the file's directory too."""
    value = t.path(key, None)
    return value if value is not None else (t.file.parent / default).resolve()


def acme_hosts(router: RouterConfig) -> list[str]:
    """The exact host names of the router's apps marked `acme = true` (their wildcards are skipped:
    no certificate for a name no one listed)."""
    return [h for app in router.apps if app.acme for h in app.hosts if not h.startswith("*")]


def _build(root: Table) -> CertManagerConfig:
    c = root.table("cert_manager")
    directory_url = c.str("directory_url", LETS_ENCRYPT_STAGING)
    if not directory_url.startswith("https://"):
        raise c.error("directory_url", f"{directory_url!r}: the ACME directory must be an https:// URL")
    contact = c.str_list("contact", [])
    for i, value in enumerate(contact):
        if not value.startswith("mailto:"):
            raise ConfigError(c.file, f"{c.key('contact')}[{i}]", f"{value!r}: expected 'mailto:address'")
    listed = [_name(c, f"{c.key('names')}[{i}]", n) for i, n in enumerate(c.str_list("names", []))]
    router_path = c.path("router_config", None)
    cfg = dict(
        path=root.file, directory_url=directory_url, contact=contact,
        account_key=_path(c, "account_key", "../state/acme/account.key"),
        ca_bundle=c.path("ca_bundle", None),
        key_type=c.str("key_type", "ec-p256", KEY_TYPES),
        router_config=router_path,
        certs_dir=_path(c, "certs_dir", "../certs/live"),
        challenge_dir=_path(c, "challenge_dir", "../state/acme-challenges"),
        state_dir=_path(c, "state_dir", "../state/acme"),
        retry_min=c.positive_seconds("retry_min", 60.0),
        retry_max=c.positive_seconds("retry_max", 86400.0),
        order_timeout=c.positive_seconds("order_timeout", 90.0),
        expiry_warning_days=c.number("expiry_warning_days", 14.0, 0, 365),
    )
    c.done()
    if cfg["retry_max"] < cfg["retry_min"]:
        raise c.error("retry_max", f"{cfg['retry_max']:g} is below retry_min ({cfg['retry_min']:g})")
    if cfg["ca_bundle"] is not None and not cfg["ca_bundle"].is_file():
        raise c.error("ca_bundle", f"{cfg['ca_bundle']}: no such file")
    from_router: list[str] = []
    if router_path is not None:
        try:
            router = load_router_config(router_path)
        except ConfigError as e:
            raise c.error("router_config", f"cannot load: {e}") from None
        from_router = acme_hosts(router)
        if from_router and router.acme_challenge_dir is None:
            raise c.error("router_config", f"{router_path.name} has apps with acme = true but no "
                                           "[router] acme_challenge_dir: the CA's validation would not be answered")
        if router.acme_challenge_dir is not None and router.acme_challenge_dir != cfg["challenge_dir"]:
            raise c.error("challenge_dir", f"{cfg['challenge_dir']} is not the router's acme_challenge_dir "
                                           f"({router.acme_challenge_dir}): the router would not find the tokens")
    admin = admin_table(root, cfg["state_dir"] / "stats")
    return CertManagerConfig(names=tuple(sorted(set(listed + from_router))), admin=admin, **cfg)


def load_cert_manager_config(path: str | Path) -> CertManagerConfig:
    return load(path, _build)

"""`frontgate check` across the three stages: what each file's own validation cannot see because
it takes two files to be wrong. Errors (the pipeline would not work as written) block a deploy;
warnings (it works, but something will bite) are printed and do not.

- the terminator forwards to a router listener, and that listener expects the PROXY header;
- the router trusts the address the terminator connects from (forward_to over TCP): PROXY headers
  from anyone else are refused;
- the checker follows the router's own file, so its targets are exactly the router's servers (and
  it writes the state file the router reads);
- apps that declare client_ca are asked for by the terminator (it follows the router's file);
- every app host is covered by some certificate (warning, naming the host);
- the terminator's own warnings: certificates expiring within 14 days (or expired), loose key
  permissions, names that can never match.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from frontgate import names
from frontgate.addresses import parse_ip
from frontgate.config import (
    Address,
    CheckerConfig,
    Listener,
    RouterConfig,
    TerminatorConfig,
)
from mux_router.routing import ip_in


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def forwarding_listener(router: RouterConfig, terminator: TerminatorConfig) -> Listener | None:
    """The router listener the terminator's forward_to reaches, if any."""
    return next((l for l in router.listeners
                 if same_address(l.address, router.path, terminator.forward_to, terminator.path)), None)


def same_address(listen: Address, listen_file: Path, target: Address, target_file: Path) -> bool:
    """A connect to `target` reaches a socket bound to `listen` (relative unix paths are relative
    to each one's file; a wildcard bind takes every address of its port)."""
    if listen.is_unix != target.is_unix:
        return False
    if listen.is_unix:
        return (listen_file.parent / listen.path).resolve() == (target_file.parent / target.path).resolve()
    if listen.port != target.port:
        return False
    try:
        return ipaddress.ip_address(listen.host).is_unspecified or listen.host == target.host
    except ValueError:
        return listen.host == target.host


def cross_check(terminator: TerminatorConfig | None, router: RouterConfig | None,
                checker: CheckerConfig | None) -> Findings:
    """Each file loaded on its own (None: it did not load; its errors are reported already)."""
    found = Findings()
    if router is not None and checker is not None:
        _checker_follows_router(router, checker, found)
    if terminator is None or router is None:
        return found
    _forwarding(router, terminator, found)
    _client_certificates(router, terminator, found)
    _certificates(router, terminator, found)
    return found


def _checker_follows_router(router: RouterConfig, checker: CheckerConfig, found: Findings) -> None:
    if checker.router.path.resolve() != router.path.resolve():
        found.errors.append(
            f"{checker.path}: checker.router_config: names {checker.router.path}, not {router.path}: the checker "
            f"would probe other servers than the router's and write {checker.state_file}, which the router "
            f"does not read ({router.state_file})")


def _forwarding(router: RouterConfig, terminator: TerminatorConfig, found: Findings) -> None:
    listener = forwarding_listener(router, terminator)
    where = f"{terminator.path}: terminator.forward_to"
    if listener is None:
        have = ", ".join(f"{l.name} ({l.address})" for l in router.listeners)
        found.errors.append(f"{where}: {terminator.forward_to} is no listener of {router.path.name} (has: {have})")
        return
    if not listener.proxy_protocol:
        found.errors.append(f"{where}: listener {listener.name} of {router.path.name} does not expect the PROXY "
                            "header the terminator sends (set proxy_protocol = true there)")
    target = terminator.forward_to
    if not target.is_unix:
        # Over loopback (the usual case) the terminator connects from the address it connects to.
        source = parse_ip(target.host)
        if source is not None and not ip_in(source, router.trusted_sources):
            found.errors.append(f"{router.path}: router.trusted_sources: does not cover {source}, where the "
                                f"terminator connects from ({where} = {target}): its PROXY headers would be refused")


def _client_certificates(router: RouterConfig, terminator: TerminatorConfig, found: Findings) -> None:
    if not router.client_auth_rules:
        return
    follows = terminator.router_config is not None and terminator.router_config.resolve() == router.path.resolve()
    if not follows:
        # The router would refuse every request for those apps: no handshake would ask for a certificate.
        found.errors.append(f"{terminator.path}: terminator.router_config: must name {router.path.name}, whose apps "
                            "declare client_ca: the terminator asks for client certificates from that declaration")


def _certificates(router: RouterConfig, terminator: TerminatorConfig, found: Findings) -> None:
    from tls_terminator.certs import CertStore  # pyOpenSSL: only here
    try:
        store = CertStore.load(terminator, strict=False)
    except Exception:       # noqa: BLE001: check_certificates has reported why, as an error
        return
    found.warnings += [f"{terminator.path}: {w}" for w in store.warnings()]
    patterns = [p for c in store.certificates for p in names.certificate_patterns(c.names)[0]]
    relayed = [p for route in terminator.passthrough for p in route.sni]
    for app in router.apps:
        for host in app.hosts:
            sample = _sample(host)
            if any(names.matches(p, sample) for p in relayed):
                continue
            if not any(names.matches(p, sample) for p in patterns):
                found.warnings.append(f"{router.path}: app {app.name}: host {host} is covered by no certificate "
                                      f"of {terminator.path.name}: clients get the default one, and a warning")


def _sample(pattern: str) -> str:
    """A name the app host pattern takes: itself, or one label in place of the wildcard."""
    return "a" + pattern.lstrip("*") if pattern.startswith("*") else pattern

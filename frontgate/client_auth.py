"""Client certificates (mTLS): declared once, on the router's apps, and judged by both stages.

An app with `client_ca` needs a client certificate issued by that CA for its hosts. From that one
declaration:
- the terminator asks for a certificate when the TLS server name fits one of those hosts
  (`terminator_rules`, by the same name index the router uses);
- the router serves a request routed to the app only when the connection's PROXY header says a
  certificate was verified for that very name: the SNI, normalised, is the request's host, and the
  rule the terminator applied to that SNI is this app's CA (`certified`). Whatever the SNI was, or
  with none, a request for the app without that gets 421 (connect again with the host as server
  name) or 403 (no certificate): `refusal`.
Pure: the config module builds the rules, the daemons ask these functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from frontgate import names

if TYPE_CHECKING:
    from frontgate.config import App

VERIFY_MODES = ("required", "optional")


@dataclass(frozen=True)
class ClientCert:
    """An app's `client_ca` and `client_cert` keys."""
    ca: Path
    verify: str = "required"      # "required": refused without one; "optional": passed on if verified


@dataclass(frozen=True)
class ClientAuthRule:
    """What the terminator asks for when the SNI fits `sni`: a certificate from `ca`."""
    sni: tuple[str, ...]
    verify: str
    ca: Path


def terminator_rules(apps: Sequence["App"]) -> tuple[ClientAuthRule, ...]:
    """One rule per CA, over the hosts of every app that names it. The handshake insists on a
    certificate only when every such app requires one (an `optional` app on the same CA must stay
    reachable without); the router judges each request by its own app either way."""
    by_ca: dict[Path, tuple[list[str], list[str]]] = {}
    for app in apps:
        if app.client_cert is not None:
            patterns, modes = by_ca.setdefault(app.client_cert.ca, ([], []))
            patterns += [p for p in app.hosts if p not in patterns]
            modes.append(app.client_cert.verify)
    return tuple(ClientAuthRule(sni=tuple(patterns), ca=ca,
                                verify="required" if set(modes) == {"required"} else "optional")
                 for ca, (patterns, modes) in by_ca.items())


def rule_index(rules: Sequence[ClientAuthRule]) -> names.NameIndex[ClientAuthRule | None]:
    """The name -> rule lookup the terminator applies to a server name, and the router to a host."""
    return names.build_index(((rule.sni, rule) for rule in rules), None)


def disagreements(apps: Sequence["App"]) -> list[tuple["App", str]]:
    """(app, problem) for declarations that let the two stages judge one name differently: a
    client-certificate app whose hosts are not all plain names or one-label wildcards, which is a
    default app, or whose hosts meet another app's hosts under a different (or no) `client_ca`."""
    out = []
    for i, app in enumerate(apps):
        if app.client_cert is None:
            continue
        if app.default or app.host_regex is not None or any(p.startswith(names.SUBTREE) for p in app.hosts):
            out.append((app, "an app with client_ca takes only exact hosts and '*.' wildcards "
                             "(no host_regex, no '**.', not default): the terminator must know every name"))
        for other in apps:
            if other is app or (other.client_cert is not None and other.client_cert.ca == app.client_cert.ca):
                continue
            shared = _shared_name(app, other)
            if shared is not None:
                theirs = f"client_ca {str(other.client_cert.ca)!r}" if other.client_cert else "no client_ca"
                out.append((app, f"its host {shared[0]!r} meets app {other.name!r}'s {shared[1]!r}, which has "
                                 f"{theirs}: one name must have one client-certificate rule"))
    return out


def _shared_name(app: "App", other: "App") -> tuple[str, str] | None:
    if other.default and not other.hosts and other.host_regex is None:
        return None                 # a pure fallback: the router's check still guards app's names
    for mine in app.hosts:
        for theirs in other.hosts:
            if names.overlap(mine, theirs):
                return mine, theirs
        if other.host_regex is not None and any(other.host_regex.fullmatch(n) for n in _samples(mine)):
            return mine, other.host_regex.pattern
    return None


def _samples(pattern: str) -> list[str]:
    """Names a pattern covers, to try a regex on (a regex's reach cannot be computed)."""
    if pattern.startswith(names.WILDCARD):
        return [label + pattern[1:] for label in ("a", "www", "x-1")]
    return [pattern]


def certified(app: "App", index: names.NameIndex[ClientAuthRule | None], sni: str | None,
              verified: bool, host: str | None) -> bool:
    """A certificate from the app's CA was verified for this very host."""
    if app.client_cert is None or not verified or host is None or sni != host:
        return False
    rule = index.lookup(host)
    return rule is not None and rule.ca == app.client_cert.ca


def refusal(app: "App", index: names.NameIndex[ClientAuthRule | None], sni: str | None,
            verified: bool, host: str | None) -> tuple[int, str] | None:
    """(status, detail) when the app requires a client certificate this request does not have."""
    if app.client_cert is None or app.client_cert.verify != "required":
        return None
    if certified(app, index, sni, verified, host):
        return None
    if sni != host:
        return 421, f"{host or 'this host'} needs a client certificate: connect with it as the TLS server name"
    return 403, f"{host} needs a verified client certificate"

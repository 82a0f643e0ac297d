"""`frontgate explain URL`: what the pipeline would do with one request, as a dry run against the
configs on disk and the health state file (when there is one).

Every decision is the daemons' own: the terminator's certificate and client-certificate choice
(tls_terminator.certs.CertStore), the router's parser (mux_router.http1.RequestHeadParser, which
normalises the path and host), its one decision function (mux_router.routing.decide: 421,
redirects, app, client certificate, ACL, body limit), its balancer and the head the backend
receives (mux_router.forwarding.backend_request_head). What is added here is only the account of
why the other apps did not match, for the operator.
"""
from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frontgate import client_auth, names
from frontgate.addresses import parse_ip
from frontgate.config import (
    App,
    ConfigError,
    Listener,
    RouterConfig,
    TerminatorConfig,
    load_router_config,
    load_terminator_config,
)
from frontgate.health_state import StateFollower
from frontgate_ops.cross_check import forwarding_listener
from mux_router import balancer, forwarding, routing
from mux_router.http1 import HttpError
from mux_router.http1_request import RequestHead, RequestHeadParser

# An outside client (TEST-NET-1, RFC 5737) unless --from says otherwise: what the world sees.
DEFAULT_CLIENT = "192.0.2.1"


@dataclass(frozen=True)
class Question:
    url: str
    client_ip: str = DEFAULT_CLIENT
    sni: str | None = None              # None: the URL's host for https, none for http
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"
    listener: str | None = None         # None: the one the URL's scheme reaches
    client_cert: str | None = None      # the CN of a verified client certificate the client presents


class ExplainError(ValueError):
    """The question cannot be asked (bad URL, unknown listener, a config that does not load)."""


def explain(configs: Path, q: Question) -> dict[str, Any]:
    """The whole account, as a JSON-ready dict (see format_explanation for the text form)."""
    url = urllib.parse.urlsplit(q.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ExplainError(f"{q.url!r}: expected an http:// or https:// URL")
    client_ip = parse_ip(q.client_ip)
    if client_ip is None:
        raise ExplainError(f"--from {q.client_ip!r} is not an IP address")
    try:
        router = load_router_config(configs / "mux-router.toml")
    except ConfigError as e:
        raise ExplainError(str(e)) from None
    terminator = _terminator_config(configs)
    out: dict[str, Any] = {"url": q.url, "client_ip": str(client_ip)}

    sni = q.sni if q.sni is not None else (url.hostname if url.scheme == "https" else None)
    if url.scheme == "https":
        out["terminator"] = terminator_view(terminator, sni)
        if out["terminator"].get("passthrough") or out["terminator"].get("refused"):
            return out       # relayed undecrypted, or no handshake: the router never sees it
    listener = choose_listener(router, terminator, url, q.listener)
    out["listener"] = {"name": listener.name, "address": str(listener.address), "scheme": listener.scheme,
                       "proxy_protocol": listener.proxy_protocol,
                       "sni_host_check": listener.proxy_protocol and listener.sni_host_check}

    target = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
    raw = _request_bytes(q.method, target, url.netloc, q.headers)
    try:
        head = RequestHeadParser().feed(raw)
    except HttpError as e:
        out["decision"] = {"outcome": "refused by the parser", "status": e.status, "detail": e.reason}
        return out
    if head is None:
        raise ExplainError("the request head is incomplete (a header with a line break?)")
    out["request"] = {"method": head.method, "target": head.target, "host": head.host, "path": head.path,
                      "forward_target": head.forward_target}

    # What the PROXY header carries: only on a PROXY listener does the router know the SNI.
    conn_sni = routing.sni_host(sni) if listener.proxy_protocol else None
    sni_check = conn_sni if listener.proxy_protocol and listener.sni_host_check else None
    verified = q.client_cert is not None and listener.proxy_protocol
    result = routing.decide(router, head, listener=listener.name, client_ip=client_ip, sni_check=sni_check,
                            sni=conn_sni, cert_verified=verified)
    out["apps"] = app_verdicts(router, head, result)
    if isinstance(result, routing.Refusal):
        out["decision"] = _refusal(result)
        if result.app is not None:
            out["app"] = result.app.name
        return out
    app = result
    out["app"] = app.name
    out["acl"] = ("no ACL" if not app.acls else
                  "allowed" if routing.acl_allows(app, client_ip, head.path) else "denied")
    out["servers"] = server_view(router, app, head, client_ip)
    picked = next((s for s in out["servers"] if s["picked"]), None)
    out["decision"] = ({"outcome": "forward", "server": picked["address"]} if picked else
                       {"outcome": "refused", "status": 503, "detail": "no server of the app is up"})
    cert_line = None
    if q.client_cert is not None:
        cert_line = routing.client_cert_line(router, app, conn_sni, forwarding.client_cert_subject_line(q.client_cert),
                                             head.host)
    out["backend_head"] = forwarding.backend_request_head(
        head, client_ip=str(client_ip), scheme=listener.scheme,
        client_trusted=routing.ip_in(client_ip, router.trusted_sources), keep_alive=not head.is_websocket_upgrade,
        forwarded_for=router.forwarded_for, forwarded=router.forwarded, rules=app.request_headers,
        client_cert_line=cert_line).decode("latin-1")
    return out


def _terminator_config(configs: Path) -> TerminatorConfig | None:
    path = configs / "tls-terminator.toml"
    if not path.exists():
        return None
    try:
        return load_terminator_config(path, require_files=False)
    except ConfigError as e:
        raise ExplainError(str(e)) from None


def _request_bytes(method: str, target: str, authority: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    authority = authority.rsplit("@", 1)[-1]        # no userinfo in a Host header
    lines = [f"{method} {target} HTTP/1.1"]
    if not any(name.lower() == "host" for name, _ in headers):
        lines.append(f"Host: {authority}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_header(text: str) -> tuple[str, str]:
    """`--header 'K: V'`."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ExplainError(f"--header {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


# --------------------------------------------------------------------------- the terminator

def terminator_view(cfg: TerminatorConfig | None, sni: str | None) -> dict[str, Any]:
    """Which certificate the terminator serves for `sni`, whether it asks for a client
    certificate, or which passthrough route relays the connection instead."""
    if cfg is None:
        return {"sni": sni, "note": "no tls-terminator.toml: nothing to say about TLS"}
    try:
        name = names.sni_name(sni)
    except names.BadName as e:
        return {"sni": sni, "refused": f"the handshake fails: {e}"}
    view: dict[str, Any] = {"sni": name}
    for route in cfg.passthrough:
        if any(names.matches(p, name) for p in route.sni):
            view["passthrough"] = {"backend": str(route.backend), "proxy_protocol": route.proxy_protocol}
            return view
    from tls_terminator.certs import (
        CertStore,  # pyOpenSSL: only when a certificate is asked about
    )
    try:
        store = CertStore.load(cfg, strict=False)
    except ConfigError as e:
        view["certificate"] = {"error": str(e)}
    else:
        chosen = store.certificate_for(name)
        view["certificate"] = {"file": str(chosen.entry.cert), "names": list(chosen.names),
                               "not_after": chosen.not_after.isoformat(), "default": chosen is store.default,
                               "matches_sni": any(names.matches(p, name)
                                                  for p in names.certificate_patterns(chosen.names)[0])}
    # The index the store asks in the handshake (CertStore.client_auth), built the same way.
    rule = client_auth.rule_index(cfg.client_auth).lookup(name)
    view["client_certificate"] = rule.verify if rule is not None else "not asked for"
    return view


# --------------------------------------------------------------------------- the router

def choose_listener(router: RouterConfig, terminator: TerminatorConfig | None, url: urllib.parse.SplitResult,
                    wanted: str | None) -> Listener:
    """The listener the URL reaches: for https the one the terminator forwards to (else the first
    PROXY listener), for http a plain listener on the URL's port (else the first plain one)."""
    if wanted is not None:
        for listener in router.listeners:
            if listener.name == wanted:
                return listener
        raise ExplainError(f"--listener {wanted!r}: no such listener "
                           f"(have: {', '.join(l.name for l in router.listeners)})")
    if url.scheme == "https":
        forwarded_to = forwarding_listener(router, terminator) if terminator is not None else None
        if forwarded_to is not None:
            return forwarded_to
        found = [l for l in router.listeners if l.proxy_protocol]
    else:
        plain = [l for l in router.listeners if not l.proxy_protocol]
        port = url.port or 80
        found = [l for l in plain if l.address.port == port] or plain
    if not found:
        raise ExplainError(f"no {url.scheme} listener in {router.path}: name one with --listener")
    return found[0]


def _refusal(r: routing.Refusal) -> dict[str, Any]:
    outcome = "redirect" if r.location is not None else "misdirected (421)" if r.status == 421 else "refused"
    out = {"outcome": outcome, "status": r.status, "detail": r.detail}
    if r.location is not None:
        out["location"] = r.location
    return out


def app_verdicts(router: RouterConfig, head: RequestHead, result: App | routing.Refusal) -> list[dict[str, str]]:
    """Per app in file order: chosen, or why not (which of its conditions failed)."""
    chosen = result if isinstance(result, App) else result.app
    decided_before = isinstance(result, routing.Refusal) and result.app is None
    out, seen_match = [], False
    for app in router.apps:
        if app is chosen:
            verdict, seen_match = "chosen", True
        elif decided_before:
            verdict = "not reached: " + ("redirected first" if result.location else "refused before routing")
        else:
            verdict = _why_not(app, head, router.routes_by_header)
            if verdict == "matches":
                verdict = "matches, but an earlier app was chosen" if seen_match else "matches"
                seen_match = True
        out.append({"app": app.name, "verdict": verdict})
    return out


def _why_not(app: App, head: RequestHead, by_header: bool) -> str:
    host, path = head.host, head.path
    if app.default and not app.hosts and app.host_regex is None:
        return "the default app: serves only what no other app matches"
    if not routing.host_conditions_hold(app, host):
        return f"host {host!r} does not match {', '.join(app.hosts) or app.host_regex.pattern}"
    if routing.other_conditions_hold(app, path, head.headers if by_header else ()):
        return "matches"
    if not path.startswith(app.path_prefix):
        return f"host matches; path {path!r} does not start with path_prefix {app.path_prefix!r}"
    if app.path_regex is not None and not app.path_regex.search(path):
        return f"host and path_prefix match; path_regex {app.path_regex.pattern!r} does not"
    return f"host and path match; header {app.header.name} does not match {app.header.regex.pattern!r}"


def server_view(router: RouterConfig, app: App, head: RequestHead, client_ip) -> list[dict[str, Any]]:
    """The app's servers as the balancer orders them for this request (a fresh router's first
    turn: round robin moves on with each request), each with its health."""
    health = StateFollower(router.state_file, router.state_stale_after)
    quiet = logging.getLogger("frontgate.health_state")
    level, quiet.level = quiet.level, logging.ERROR     # the rows below say what the file's state is
    try:
        health.refresh()
    finally:
        quiet.level = level
    fresh = health.state is not None and not health.is_stale()

    def is_down(server) -> bool:
        return health.is_down(app.server_key(server))

    chooser = balancer.for_app(app, active=lambda s: 0)
    if isinstance(chooser, balancer.Hashed):
        key = client_ip.packed if app.balance == "source" else head.path.encode()
        order = chooser.order(key, is_down)
    else:
        order = chooser.order(is_down)
    rows = []
    for server in app.servers:
        entry = health.state.servers.get(app.server_key(server)) if fresh else None
        rows.append({"address": str(server.address), "weight": server.weight,
                     "picked": bool(order) and server is order[0],
                     "order": order.index(server) + 1 if server in order else None,
                     "health": (entry.state + (" (flapping)" if entry.flapping else "")
                                if entry is not None else
                                "unknown: no fresh health state (counts as up)" if not fresh else "not checked yet"),
                     "send_proxy": server.send_proxy})
    return rows


# --------------------------------------------------------------------------- the text form

def format_explanation(out: dict[str, Any]) -> str:
    lines = [f"{out['url']} from {out['client_ip']}"]
    tls = out.get("terminator")
    if tls is not None:
        lines.append(f"tls-terminator  SNI {tls.get('sni') or '(none)'}")
        if "refused" in tls:
            lines.append(f"  {tls['refused']}")
        if "passthrough" in tls:
            p = tls["passthrough"]
            lines.append(f"  passthrough: relayed undecrypted to {p['backend']}"
                         + (" with a PROXY v2 header" if p["proxy_protocol"] else ""))
        cert = tls.get("certificate")
        if cert is not None:
            if "error" in cert:
                lines.append(f"  certificate: {cert['error']}")
            else:
                fit = "covers the name" if cert["matches_sni"] else "does NOT cover the name (a browser warns)"
                lines.append(f"  certificate: {cert['file']}{' (the default)' if cert['default'] else ''}, "
                             f"{fit}; names {', '.join(cert['names']) or '-'}; expires {cert['not_after'][:10]}")
            lines.append(f"  client certificate: {tls['client_certificate']}")
        if "note" in tls:
            lines.append(f"  {tls['note']}")
    listener = out.get("listener")
    if listener is not None:
        extra = ", PROXY header" if listener["proxy_protocol"] else ""
        extra += ", Host must equal the SNI (421)" if listener["sni_host_check"] else ""
        lines.append(f"listener  {listener['name']} ({listener['address']}, {listener['scheme']}{extra})")
    request = out.get("request")
    if request is not None:
        lines.append(f"request  {request['method']} {request['target']}: host {request['host']}, "
                     f"path {request['path']} (sent on as {request['forward_target']})")
    for row in out.get("apps", ()):
        lines.append(f"  app {row['app']}: {row['verdict']}")
    if "acl" in out:
        lines.append(f"acl  {out['acl']}")
    for s in out.get("servers", ()):
        mark = "->" if s["picked"] else "  "
        order = f"#{s['order']}" if s["order"] else "skipped"
        lines.append(f"{mark} server {s['address']} (weight {s['weight']}, {order}): {s['health']}"
                     + (", PROXY v2 header sent" if s["send_proxy"] else ""))
    d = out.get("decision")
    if d is not None:
        if d["outcome"] == "forward":
            lines.append(f"outcome  forwarded to {d['server']} (app {out['app']})")
        else:
            where = f" Location: {d['location']}" if "location" in d else ""
            lines.append(f"outcome  {d['outcome']}: {d['status']} {d.get('detail', '')}{where}".rstrip())
    if "backend_head" in out:
        lines.append("backend receives:")
        lines += ["  " + line for line in out["backend_head"].rstrip("\r\n").split("\r\n")]
    return "\n".join(lines)

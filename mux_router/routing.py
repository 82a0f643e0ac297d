"""Which app serves a request, and which requests are redirected instead. Pure functions over
the config dataclasses; the server gives them what it parsed."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

from frontgate import client_auth, names
from frontgate.addresses import IPAddress
from frontgate.config import App, ErrorPage, Network, RedirectRule, RouterConfig
from mux_router import acme_challenge

if TYPE_CHECKING:
    from mux_router.http1_request import RequestHead

Headers = tuple[tuple[bytes, bytes], ...]


def ip_in(ip: IPAddress | None, networks: Iterable[Network]) -> bool:
    # `in` across address families is simply False, which is what we want.
    return ip is not None and any(ip in net for net in networks)


@functools.lru_cache(maxsize=1024)
def _host_sets(patterns: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    """A config's host patterns split once: the exact names, and the wildcard patterns."""
    return (frozenset(p for p in patterns if not p.startswith("*")),
            tuple(p for p in patterns if p.startswith("*")))


def any_host_matches(patterns: Iterable[str], host: str | None) -> bool:
    """names.matches for any of `patterns`, with a set lookup for the exact ones (asked per request)."""
    if host is None:
        return False
    exact, wildcards = _host_sets(tuple(patterns))
    return host in exact or bool(wildcards) and any(names.matches(p, host) for p in wildcards)


def host_conditions_hold(app: App, host: str | None) -> bool:
    """The app's host conditions (patterns or regex) hold for `host`; an app without any
    takes every host, and a request without one."""
    if not app.hosts and app.host_regex is None:
        return True
    if host is None:
        return False
    return (any_host_matches(app.hosts, host)
            or (app.host_regex is not None and app.host_regex.fullmatch(host) is not None))


def other_conditions_hold(app: App, path: str, headers: Headers = ()) -> bool:
    """The app's path (prefix, and regex if set) and header conditions hold."""
    if not path.startswith(app.path_prefix):
        return False
    if app.path_regex is not None and not app.path_regex.search(path):
        return False
    if app.header is not None:
        wanted = app.header.name.encode()
        if not any(n.lower() == wanted and app.header.regex.search(v.decode("latin-1")) for n, v in headers):
            return False
    return True


class _AppsByHost:
    """One config's apps, split by host for select_app: per host, the apps whose host conditions
    hold for it, in file order. The apps' patterns are indexed once (a dict for exact names, one
    for `*.` parents, one for `**.` suffixes), so finding a host's apps costs a few dict lookups
    however many apps there are (10,000 dynamic routes); only `host_regex` apps are tried one by
    one. The answer is memoised per host; hosts come from clients, so the memo is bounded: full,
    it starts over."""

    MAX_HOSTS = 1024

    def __init__(self, apps: Sequence[App]):
        self.apps = apps                # held: the cache below is keyed by its id
        defaults = [a for a in apps if a.default]
        self.default = defaults[-1] if defaults else None
        # A default app without host conditions is only the fallback, wherever it is in the file.
        self._routed = tuple(a for a in apps if not (a.default and not a.hosts and a.host_regex is None))
        self._any_host: list[int] = []      # positions in _routed of apps without host conditions
        self._by_regex: list[int] = []
        self._exact: dict[str, list[int]] = {}
        self._wildcard: dict[str, list[int]] = {}    # "x.com" for "*.x.com"
        self._subtree: dict[str, list[int]] = {}     # "x.com" for "**.x.com"
        for i, app in enumerate(self._routed):
            if not app.hosts and app.host_regex is None:
                self._any_host.append(i)
            if app.host_regex is not None:
                self._by_regex.append(i)
            for p in app.hosts:
                if p.startswith(names.SUBTREE):
                    self._subtree.setdefault(p[len(names.SUBTREE):], []).append(i)
                elif p.startswith(names.WILDCARD):
                    self._wildcard.setdefault(p[len(names.WILDCARD):], []).append(i)
                else:                   # names.matches compares anything else as an exact name
                    self._exact.setdefault(p, []).append(i)
        self._hostless = tuple(self._routed[i] for i in self._any_host)
        self._by_host: dict[str | None, tuple[App, ...]] = {}

    def candidates(self, host: str | None) -> tuple[App, ...]:
        found = self._by_host.get(host)
        if found is None:
            found = self._hostless if host is None else self._work_out(host)
            if len(self._by_host) >= self.MAX_HOSTS:
                self._by_host.clear()
            self._by_host[host] = found
        return found

    def _work_out(self, host: str) -> tuple[App, ...]:
        """The apps host_conditions_hold for `host`, in file order, from the indexes (names.matches'
        rules: `*.p` takes one non-empty label before `.p`, `**.p` any non-empty text before it)."""
        hits = [*self._any_host, *self._exact.get(host, ())]
        first, dot, parent = host.partition(".")
        if dot and first:
            hits += self._wildcard.get(parent, ())
        if self._subtree:
            at = host.find(".", 1)
            while at != -1:
                hits += self._subtree.get(host[at + 1:], ())
                at = host.find(".", at + 1)
        hits += (i for i in self._by_regex if self._routed[i].host_regex.fullmatch(host) is not None)
        return tuple(self._routed[i] for i in sorted(set(hits)))


_INDEXES: dict[int, _AppsByHost] = {}       # by id(apps): the live config's, and one just replaced


def _apps_by_host(apps: Sequence[App]) -> _AppsByHost:
    index = _INDEXES.get(id(apps))
    if index is None or index.apps is not apps:
        if len(_INDEXES) >= 4:
            _INDEXES.clear()
        index = _INDEXES[id(apps)] = _AppsByHost(apps)
    return index


def select_app(apps: Sequence[App], host: str | None, path: str, headers: Headers = ()) -> App | None:
    """The first app in file order whose conditions match; else the default app, if any (a
    default app without host conditions is only that fallback, wherever it is in the file)."""
    index = _apps_by_host(apps)
    for app in index.candidates(host.lower() if host is not None else None):
        if other_conditions_hold(app, path, headers):
            return app
    return index.default


def select_app_for(config: RouterConfig, head: RequestHead) -> App | None:
    """select_app for a parsed request; its fields are read (from its raw head) only when some
    app routes by a header."""
    return select_app(config.apps, head.host, head.path, head.headers if config.routes_by_header else ())


def sni_host(authority: str | None) -> str | None:
    """A PROXY header's SNI in the form RequestHead.host has, to be computed once per connection;
    None without one (or for an IP literal, which names no host). A name the terminator would have
    refused (a peer that is not our terminator) becomes one no host equals: every request on the
    connection is misdirected."""
    try:
        return names.sni_name(authority)
    except names.BadName:
        return "<invalid server name>"


def misdirected(sni: str | None, host: str | None) -> bool:
    """RFC 9110 15.5.20: the request names another host than the TLS connection was made for.
    Both normalised (sni_host, RequestHead.host). No SNI or no Host: nothing to compare (a
    request without Host can only reach apps that take any host, as the SNI name does)."""
    return sni is not None and host is not None and host != sni


def acl_allows(app: App, client_ip: IPAddress | None, path: str) -> bool:
    """The first of the app's ACLs whose path_prefix starts the path decides: denied when the
    source is in `deny`, or `allow` is set and the source is not in it. No ACL: allowed. A unix
    socket peer (no IP) is judged like any other: it is in no CIDR."""
    for acl in app.acls:
        if path.startswith(acl.path_prefix):
            if ip_in(client_ip, acl.deny):
                return False
            return not acl.allow or ip_in(client_ip, acl.allow)
    return True


def find_redirect(rules: Sequence[RedirectRule], *, listener: str, client_ip: IPAddress | None,
                  host: str | None, host_as_sent: str | None, target: str) -> tuple[int, str] | None:
    """(code, Location) from the first rule whose conditions all hold, else None.

    `host` is the normalized host (for patterns), `host_as_sent` the Host header verbatim (what a
    `to_scheme` redirect keeps, as HAProxy does), `target` the path and query (kept by `to_scheme`
    and `prefix`, as HAProxy's `redirect prefix`). The host a Location names is the rule's, or
    the request's own for `to_scheme`: never one the target smuggles in (see _host_free).
    """
    target = _host_free(target)
    for rule in rules:
        if rule.listeners and listener not in rule.listeners:
            continue
        if rule.source_in and not ip_in(client_ip, rule.source_in):
            continue
        if rule.source_not_in and ip_in(client_ip, rule.source_not_in):
            continue
        if rule.hosts and not any_host_matches(rule.hosts, host):
            continue
        if rule.to_scheme is not None:
            if not host_as_sent:
                continue        # nowhere to send the client: let routing answer
            return rule.code, f"{rule.to_scheme}://{host_as_sent}{target}"
        if rule.prefix is not None:
            # "https://example.com/" and "/" as prefixes must not double the slash.
            return rule.code, rule.prefix.rstrip("/") + target
        return rule.code, rule.location
    return None


class Refusal(NamedTuple):
    """The router's own answer instead of forwarding: an error, or a redirect (`location`)."""
    status: int
    detail: str = ""
    termination: str = "PR"            # the log's termination state
    route: str | None = None           # the log's route when no app is chosen
    app: App | None = None             # the app chosen, for its error pages
    close: bool = False
    location: str | None = None
    page: ErrorPage | None = None      # the body to send (an ACME challenge's answer)


def decide(cfg: RouterConfig, head: RequestHead, *, listener: str, client_ip: IPAddress | None,
           sni_check: str | None, sni: str | None, cert_verified: bool) -> App | Refusal:
    """Every decision on a request before it is forwarded, in order, in the one place both the
    fast path and the engine ask: the 421 check (`sni_check`: the connection's SNI where the
    listener checks it), redirects, the app, its client-certificate rule (`sni`: the connection's
    SNI whatever the listener, `cert_verified`: the PROXY header's word), its ACL, whether it takes
    a WebSocket upgrade (App.websocket), its body limit."""
    host = head.host
    if cfg.acme_challenge_dir is not None and acme_challenge.wanted(head.path, head.method):
        challenge = _acme_challenge(cfg, head, listener)
        if challenge is not None:
            return challenge
    if misdirected(sni_check, host):
        # This connection is not for that host: whatever the terminator checked for the SNI name
        # (a client certificate) says nothing about the other one. Closed: the client is to open
        # a new connection for that host.
        return Refusal(421, f"this connection is for {sni_check}, not {host}", route="<misdirected>", close=True)
    if cfg.redirects:
        redirect = find_redirect(cfg.redirects, listener=listener, client_ip=client_ip, host=host,
                                 host_as_sent=head.host_as_sent, target=head.origin_target)
        if redirect is not None:
            return Refusal(redirect[0], termination="LR", route="<redirect>", location=redirect[1])
    app = select_app_for(cfg, head)
    if app is None:
        return Refusal(404, "no app serves this host and path")
    if app.client_cert is not None:
        refused = client_auth.refusal(app, cfg.client_auth_index, sni, cert_verified, host)
        if refused is not None:
            return Refusal(refused[0], refused[1], app=app, close=refused[0] == 421)
    if app.acls and not acl_allows(app, client_ip, head.path):
        return Refusal(403, "denied by the app's access rules", app=app)
    if head.is_websocket_upgrade and not app.websocket:
        # As Envoy without the upgrade enabled: refused, not forwarded as a plain GET (which the
        # backend might answer 200, and the client would take for a broken handshake).
        return Refusal(403, f"WebSocket upgrades are off for {app.name}", app=app)
    if app.max_body and (head.content_length or 0) > app.max_body:
        return Refusal(413, f"the body is larger than {app.max_body} bytes", app=app)
    return app


def _acme_challenge(cfg: RouterConfig, head: RequestHead, listener: str) -> Refusal | None:
    """An http-01 validation on a plain-HTTP listener: the key authorization, or 404. None on a
    TLS listener (the request is routed as any other)."""
    if not any(l.name == listener and l.scheme == "http" for l in cfg.listeners):
        return None
    body = acme_challenge.answer(cfg.acme_challenge_dir, head.path)
    if body is None:
        return Refusal(404, "no such ACME challenge token", route="<acme-challenge>")
    return Refusal(200, termination="LR", route="<acme-challenge>",
                   page=ErrorPage(body, acme_challenge.CONTENT_TYPE))


def client_cert_line(cfg: RouterConfig, app: App, sni: str | None, line: bytes | None,
                     host: str | None) -> bytes | None:
    """The X-Client-Cert-Subject line a request's backend gets: only for an app with client_ca,
    and only when the certificate was verified for this very host."""
    if line is None or not client_auth.certified(app, cfg.client_auth_index, sni, True, host):
        return None
    return line
def _host_free(target: str) -> str:
    """`target` starting with exactly one slash. The parser's normalised targets always do; this
    keeps any other caller from making `prefix = "/"` answer `//evil.example/x` with a Location
    that a browser reads as another host (`/\\evil.example` too: browsers take `\\` for `/`)."""
    if target[:1] == "/" and target[1:2] not in ("/", "\\"):
        return target
    return "/" + target.lstrip("/\\")

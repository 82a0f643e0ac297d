"""The router's [[app]] tables: hosts, path, servers, balancing, ACLs, header rules, error pages,
client certificates."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from frontgate import client_auth
from frontgate.client_auth import ClientCert
from frontgate.config.schema import (
    MISSING,
    Address,
    ConfigError,
    Network,
    Table,
    host_pattern,
    networks,
    regex,
)


@dataclass(frozen=True)
class Server:
    address: Address
    weight: int = 1
    maxconn: int = 0             # requests in flight at once; 0 = no limit
    send_proxy: bool = False     # a PROXY v2 header starts each connection (router and checker)


@dataclass(frozen=True)
class HeaderMatch:
    name: str                    # lower-case
    regex: re.Pattern            # searched in each value of the header


@dataclass(frozen=True)
class Acl:
    path_prefix: str = "/"
    allow: tuple[Network, ...] = ()     # non-empty: only these sources
    deny: tuple[Network, ...] = ()


@dataclass(frozen=True)
class HeaderRules:
    set: tuple[tuple[str, str], ...] = ()     # replace every field of that name
    add: tuple[tuple[str, str], ...] = ()     # append a field
    delete: tuple[str, ...] = ()              # lower-case names


NO_HEADER_RULES = HeaderRules()


@dataclass(frozen=True)
class ErrorPage:
    body: bytes
    content_type: str


@dataclass(frozen=True)
class App:
    name: str
    hosts: tuple[str, ...]
    servers: tuple[Server, ...]
    path_prefix: str = "/"
    balance: str = "roundrobin"  # roundrobin | leastconn | source | uri
    retries: int = 2             # further servers tried when a connect fails
    host_regex: re.Pattern | None = None   # full match against the lower-cased host
    path_regex: re.Pattern | None = None   # searched in the path
    header: HeaderMatch | None = None
    default: bool = False        # serves what no other app matches
    redispatch: bool = True      # a retry goes to another server (else the same one again)
    passive_fall: int = 3        # refused connects in a row that mark a server down locally; 0 = never
    max_body: int = 0            # request body bytes; larger: 413. 0 = no limit
    acls: tuple[Acl, ...] = ()
    request_headers: HeaderRules = NO_HEADER_RULES
    response_headers: HeaderRules = NO_HEADER_RULES
    error_pages: Mapping[int, ErrorPage] = field(default_factory=dict, hash=False)
    client_cert: ClientCert | None = None   # client_ca: a verified client certificate is needed
    acme: bool = False           # cert-manager obtains certificates for its exact host names
    tunnel_ping: float | None = None        # None: [timeouts] tunnel_ping

    def server_key(self, server: Server) -> str:
        """The key of this server in the health state file."""
        key = self._server_keys.get(id(server))     # the router asks several times per request
        return key if key is not None else f"{self.name}/{server.address}"

    @functools.cached_property
    def _server_keys(self) -> dict[int, str]:
        # By id: the servers are this app's own (held in self.servers) for as long as it lives.
        return {id(s): f"{self.name}/{s.address}" for s in self.servers}


_BALANCERS = ("roundrobin", "leastconn", "source", "uri")


_FIELD_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


_FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                             "upgrade", "te", "trailer", "proxy-connection"})


_FIELD_VALUE_RE = re.compile(r"[\t \x21-\x7e]*")


_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
                  ".json": "application/json", ".txt": "text/plain; charset=utf-8"}


MAX_ERROR_PAGE = 64 * 1024


def _client_cert(at: Table) -> ClientCert | None:
    """`client_ca` (a PEM bundle) and `client_cert` ("required", the default, or "optional")."""
    if "client_ca" not in at.data:
        if "client_cert" in at.data:
            raise at.error("client_cert", "needs client_ca (the CA bundle that issues the certificates)")
        return None
    cert = ClientCert(ca=at.path("client_ca"), verify=at.str("client_cert", "required", client_auth.VERIFY_MODES))
    if not cert.ca.is_file():
        raise at.error("client_ca", f"file {str(cert.ca)!r} not found")
    return cert


CLIENT_CERT_SUBJECT_FIELD = "X-Client-Cert-Subject"


_ROUTER_SET_REQUEST_FIELDS = frozenset({CLIENT_CERT_SUBJECT_FIELD.lower()})


def _header_rules(t: Table, reserved: frozenset[str] = frozenset()) -> HeaderRules:
    """`{ set = { Name = "value" }, add = { Name = "value" }, delete = ["Name"] }`; `reserved`
    names are the router's own and no rule may touch them."""
    def pairs(kind: str) -> tuple[tuple[str, str], ...]:
        pt = t.table(kind)
        out = []
        for field_name in pt.data:
            value = pt.str(field_name)
            if not _FIELD_NAME_RE.fullmatch(field_name):
                raise pt.error(field_name, "not a valid header name")
            if field_name.lower() in _FRAMING_FIELDS:
                raise pt.error(field_name, "framing and connection fields cannot be changed by header rules")
            if field_name.lower() in reserved:
                raise pt.error(field_name, "only the router sets this field (from the PROXY header)")
            if not _FIELD_VALUE_RE.fullmatch(value):
                raise pt.error(field_name, "header values are printable ASCII")
            out.append((field_name, value))
        pt.done()
        return tuple(out)
    rules = HeaderRules(set=pairs("set"), add=pairs("add"))
    delete = t.str_list("delete", [])
    for i, field_name in enumerate(delete):
        if not _FIELD_NAME_RE.fullmatch(field_name) or field_name.lower() in _FRAMING_FIELDS | reserved:
            raise ConfigError(t.file, f"{t.key('delete')}[{i}]",
                              f"{field_name!r} is not a header name that header rules may delete")
    t.done()
    if not (rules.set or rules.add or delete):
        return NO_HEADER_RULES
    return HeaderRules(set=rules.set, add=rules.add, delete=tuple(n.lower() for n in delete))


def _error_pages(t: Table) -> dict[int, ErrorPage]:
    """`{ 503 = "errors/503.html" }`: the file is read now, so a missing one is a config error."""
    pages = {}
    for code_text in t.data:
        if not code_text.isdigit() or not 400 <= int(code_text) <= 599:
            raise t.error(code_text, "error pages are keyed by a status code 400-599")
        path = t.path(code_text)
        try:
            body = path.read_bytes()
        except OSError as e:
            raise t.error(code_text, f"cannot read {str(path)!r}: {e.strerror}") from None
        if len(body) > MAX_ERROR_PAGE:
            raise t.error(code_text, f"{str(path)!r} is larger than {MAX_ERROR_PAGE} bytes")
        pages[int(code_text)] = ErrorPage(body, _CONTENT_TYPES.get(path.suffix.lower(), "text/plain; charset=utf-8"))
    t.done()
    return pages


def no_duplicate_addresses(file: Path, key: str, entries: list[tuple[str, Address]]) -> None:
    seen: dict[Address, str] = {}
    for k, addr in entries:
        if addr in seen:
            raise ConfigError(file, k, f"{addr} is already used by {seen[addr]}")
        seen[addr] = k


def parse_app(at: Table, aliases: Mapping[str, tuple[Network, ...]]) -> App:
    """One [[app]] table (`aliases`: "trusted" for the ACLs' CIDR lists)."""
    name = at.str("name")
    if not name or "/" in name:
        raise at.error("name", f"{name!r}: app names are non-empty and have no '/'")
    hosts = tuple(host_pattern(at, "hosts", i, h) for i, h in enumerate(at.str_list("hosts", [])))
    host_regex = regex(at, "host_regex")
    default = at.bool("default", False)
    if not hosts and host_regex is None and not default:
        raise at.error("hosts", "at least one host name (or host_regex, or default = true) is needed")
    path_prefix = at.str("path_prefix", "/")
    if not path_prefix.startswith("/"):
        raise at.error("path_prefix", f"{path_prefix!r} must start with '/'")
    servers = []
    for i, s in enumerate(at.list("servers")):
        key = f"{at.key('servers')}[{i}]"
        if isinstance(s, str):
            s = {"address": s}
        st = Table(s, at.file, key)
        servers.append(Server(address=st.address("address"), weight=st.int("weight", 1, 0, 256),
                              maxconn=st.int("maxconn", 0, 0, 1_000_000), send_proxy=st.bool("send_proxy", False)))
        st.done()
    if not servers:
        raise at.error("servers", "at least one server is needed")
    no_duplicate_addresses(at.file, at.key("servers"), [(f"{at.key('servers')}[{i}]", s.address)
                                                          for i, s in enumerate(servers)])
    header = None
    if "header" in at.data:
        ht = at.table("header")
        header_name = ht.str("name")
        if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", header_name):
            raise ht.error("name", f"{header_name!r} is not a header name")
        header = HeaderMatch(name=header_name.lower(), regex=regex(ht, "regex", MISSING))
        ht.done()
    acls = []
    for act in at.tables("acl"):
        acl = Acl(path_prefix=act.str("path_prefix", "/"), allow=networks(act, "allow", [], aliases),
                  deny=networks(act, "deny", [], aliases))
        if not acl.path_prefix.startswith("/"):
            raise act.error("path_prefix", f"{acl.path_prefix!r} must start with '/'")
        act.done()
        acls.append(acl)
    app = App(name=name, hosts=hosts, path_prefix=path_prefix,
              balance=at.str("balance", "roundrobin", _BALANCERS),
              servers=tuple(servers), retries=at.int("retries", 2, 0, 16),
              host_regex=host_regex, path_regex=regex(at, "path_regex"), header=header,
              default=default, redispatch=at.bool("redispatch", True),
              passive_fall=at.int("passive_fall", 3, 0, 1000),
              max_body=at.int("max_body", 0, 0, 2**62), acls=tuple(acls),
              request_headers=_header_rules(at.table("request_headers"), _ROUTER_SET_REQUEST_FIELDS),
              response_headers=_header_rules(at.table("response_headers")),
              error_pages=_error_pages(at.table("error_pages")),
              client_cert=_client_cert(at), acme=at.bool("acme", False),
              tunnel_ping=at.number("tunnel_ping", None, 0.0, 86400.0))
    at.done()
    return app

"""Host names: the one rule both stages use for every name decision, pure.

The terminator (certificate choice, client-certificate demand, passthrough) and the router (app
`hosts`, redirects, the 421 check, client-certificate requirement) compare names only in the form
`normalize` gives: ASCII lower-case, at most one trailing dot removed, every label 1-63 letters,
digits or hyphens, 253 characters at most. Anything else (an empty label as in `a..b` or `a.b..`,
a control character, `_`, non-ASCII) is not a name: the terminator refuses the handshake, the
router answers 400. Two stages that normalised differently would judge two different names.

Patterns: `name` (exact), `*.suffix` (RFC 6125: exactly one label more: `a.suffix`, neither
`suffix` nor `a.b.suffix`), and, for app hosts and redirect rules only, `**.suffix` (any number of
labels more, not `suffix` itself). `**.` never decides security: certificates, client
certificates and passthrough take exact names and one-label wildcards only.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Generic, Iterable, Mapping, Sequence, TypeVar

T = TypeVar("T")

MAX_NAME = 253
_LABEL = r"[a-z0-9-]{1,63}"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT_RE = re.compile(r"[0-9]{1,5}")
WILDCARD, SUBTREE = "*.", "**."


class BadName(ValueError):
    """Not a host name (the text says why)."""


def normalize(text: str) -> str:
    """The comparable form of a DNS name; BadName when `text` is not one."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > MAX_NAME or not name.isascii() or not _NAME_RE.fullmatch(name):
        raise BadName(f"{text!r} is not a host name (letters, digits, '-' in dot-separated labels)")
    return name


def is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def sni_name(raw: str | bytes | None) -> str | None:
    """A TLS server name (RFC 6066 3) in normalised form; None without one, or for an IP literal
    (which names no host; some clients send their URL's address there). BadName for anything else
    that is not a host name."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise BadName(f"server name {raw!r} is not ASCII") from None
    if not raw:
        return None
    if is_ip_literal(raw):
        return None
    return normalize(raw)


def split_authority(text: str) -> tuple[str | None, str | None]:
    """A Host header or absolute-form authority -> (host, port): the host normalised (an IP
    literal in its canonical form, IPv6 in brackets), None for an empty value; BadName when the
    host is neither a name nor an IP literal, or the port is not a number."""
    if not text:
        return None, None
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        try:
            address = ipaddress.IPv6Address(inside) if bracket else None
        except ValueError:
            address = None
        if address is None:
            raise BadName(f"{text!r}: not an IPv6 literal")
        host = f"[{address.compressed}]"
        port = _port(text, rest[1:]) if rest.startswith(":") else _no_rest(text, rest)
        return host, port
    host, sep, port_text = text.partition(":")
    port = _port(text, port_text) if sep else None
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        return normalize(host), port


def _port(text: str, port: str) -> str | None:
    if port == "":
        return None          # "host:" is allowed (RFC 3986 3.2.3: an empty port is no port)
    if not _PORT_RE.fullmatch(port):
        raise BadName(f"{text!r}: the port is not a number")
    return port


def _no_rest(text: str, rest: str) -> None:
    if rest:
        raise BadName(f"{text!r}: text after the IPv6 literal")
    return None


# --------------------------------------------------------------------------- patterns

def pattern(text: str, *, subtree: bool = False) -> str:
    """A configured pattern in normalised form; BadName when it is not an exact name, a `*.`
    wildcard or (only where `subtree` is allowed) a `**.` pattern."""
    lowered = text.strip().lower()
    for prefix in ((SUBTREE, WILDCARD) if subtree else (WILDCARD,)):
        if lowered.startswith(prefix):
            return prefix + normalize(lowered[len(prefix):])
    if lowered.startswith(SUBTREE):
        raise BadName(f"{text!r}: '**.' (any depth) is only for app hosts and redirects, "
                      "never for certificates or client certificates")
    if "*" in lowered:
        raise BadName(f"{text!r}: a wildcard is only a whole first label ('*.example.com')")
    return normalize(lowered)


def matches(pattern: str, name: str | None) -> bool:
    """`name` (normalised) fits `pattern` (normalised)."""
    if name is None:
        return False
    if pattern.startswith(SUBTREE):
        suffix = pattern[2:]                     # ".example.com"
        return name.endswith(suffix) and len(name) > len(suffix)
    if pattern.startswith(WILDCARD):
        suffix = pattern[1:]
        return name.endswith(suffix) and len(name) > len(suffix) and "." not in name[:-len(suffix)]
    return name == pattern


def overlap(a: str, b: str) -> bool:
    """Some name fits both patterns (used to find declarations that could disagree)."""
    if not a.startswith("*"):
        return matches(b, a)
    if not b.startswith("*"):
        return matches(a, b)
    sa, sb = a.split(".", 1)[1], b.split(".", 1)[1]
    within = sa == sb
    if a.startswith(SUBTREE):          # every name under sa, at any depth
        within = within or sb.endswith("." + sa)
    if b.startswith(SUBTREE):
        within = within or sa.endswith("." + sb)
    return within


# --------------------------------------------------------------------------- lookup

@dataclass(frozen=True)
class NameIndex(Generic[T]):
    """Patterns -> entries, looked up by name: an exact name wins over a `*.` wildcard, which wins
    over the longest `**.` suffix; among equal patterns the first configured wins."""
    default: T
    exact: Mapping[str, T] = field(default_factory=dict)
    wildcards: Mapping[str, T] = field(default_factory=dict)          # "example.com" for "*.example.com"
    subtrees: Sequence[tuple[str, T]] = ()                             # (".example.com", entry), longest first

    def lookup(self, name: str | None) -> T:
        """The entry for a normalised name (or None: the default)."""
        if name is None:
            return self.default
        entry = self.exact.get(name)
        if entry is not None:
            return entry
        _, dot, parent = name.partition(".")
        if dot:
            entry = self.wildcards.get(parent)
            if entry is not None:
                return entry
        for suffix, entry in self.subtrees:
            if name.endswith(suffix) and len(name) > len(suffix):
                return entry
        return self.default


def build_index(entries: Iterable[tuple[Iterable[str], T]], default: T) -> NameIndex[T]:
    """`entries`: (normalised patterns, entry) in configuration order."""
    exact: dict[str, T] = {}
    wildcards: dict[str, T] = {}
    subtrees: dict[str, T] = {}
    for patterns, entry in entries:
        for p in patterns:
            if p.startswith(SUBTREE):
                subtrees.setdefault(p[2:], entry)
            elif p.startswith(WILDCARD):
                wildcards.setdefault(p[2:], entry)
            else:
                exact.setdefault(p, entry)
    ordered = tuple(sorted(subtrees.items(), key=lambda item: -len(item[0])))
    return NameIndex(default=default, exact=exact, wildcards=wildcards, subtrees=ordered)


def certificate_patterns(texts: Iterable[str]) -> tuple[list[str], list[str]]:
    """A certificate's DNS names as patterns (exact or `*.`), and those that can never match
    (partial-label wildcards, names that are not host names): worth a warning."""
    usable, unusable = [], []
    for text in texts:
        try:
            usable.append(pattern(text))
        except BadName:
            unusable.append(text)
    return usable, unusable
